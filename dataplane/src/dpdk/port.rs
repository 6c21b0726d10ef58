//! Ethernet ports: configuration, queues, statistics.

use std::ffi::{CStr, CString};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::mbuf::{Mbuf, RxBurst, BURST_SIZE};
use super::{check, DpdkError, Eal, Mempool};

/// RSS hash types (`RTE_ETH_RSS_*`; function-like macros bindgen cannot expand).
mod rss {
    pub const IPV4: u64 = 1 << 2;
    pub const FRAG_IPV4: u64 = 1 << 3;
    pub const NONFRAG_IPV4_TCP: u64 = 1 << 4;
    pub const NONFRAG_IPV4_UDP: u64 = 1 << 5;
    pub const NONFRAG_IPV4_OTHER: u64 = 1 << 7;
    pub const IPV6: u64 = 1 << 8;
    pub const FRAG_IPV6: u64 = 1 << 9;
    pub const NONFRAG_IPV6_TCP: u64 = 1 << 10;
    pub const NONFRAG_IPV6_UDP: u64 = 1 << 11;
    pub const NONFRAG_IPV6_OTHER: u64 = 1 << 12;
    pub const WANTED: u64 = IPV4
        | FRAG_IPV4
        | NONFRAG_IPV4_TCP
        | NONFRAG_IPV4_UDP
        | NONFRAG_IPV4_OTHER
        | IPV6
        | FRAG_IPV6
        | NONFRAG_IPV6_TCP
        | NONFRAG_IPV6_UDP
        | NONFRAG_IPV6_OTHER;
}

/// A Toeplitz key of repeated 0x6d5a makes the hash symmetric: both
/// directions of a flow land on the same queue, and so on the same worker
/// (Woo & Park, "Scalable TCP Session Monitoring with Symmetric RSS").
const SYMMETRIC_RSS_KEY: [u8; 52] = {
    let mut key = [0u8; 52];
    let mut i = 0;
    while i < 52 {
        key[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    key
};

/// A DPDK port id. Prints as `port0`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl fmt::Debug for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How to set a port up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive queues (one per worker that polls this port).
    pub rx_queues: u16,
    /// Transmit queues (one per worker, so that no two threads share one).
    pub tx_queues: u16,
    /// Receive descriptors per queue (adjusted to the device's limits).
    pub rx_ring: u16,
    /// Transmit descriptors per queue (adjusted to the device's limits).
    pub tx_ring: u16,
    /// Accept frames for any MAC address.
    pub promiscuous: bool,
    /// MTU to set, if not the device default.
    pub mtu: Option<u16>,
}

/// A link's state as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether the link is up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
}

/// Basic counters of a port (`rte_eth_stats`), per port and for the first 16 queues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets the hardware dropped because the rx ring was full.
    pub rx_missed: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Receive failures for want of a buffer.
    pub rx_nombuf: u64,
    /// Per-queue received packets.
    pub queue_rx_packets: Vec<u64>,
    /// Per-queue sent packets.
    pub queue_tx_packets: Vec<u64>,
    /// Per-queue received bytes.
    pub queue_rx_bytes: Vec<u64>,
    /// Per-queue sent bytes.
    pub queue_tx_bytes: Vec<u64>,
}

#[derive(Debug)]
struct PortInner {
    id: PortId,
    name: String,
    driver: String,
    mac: [u8; 6],
    rx_queues: u16,
    tx_queues: u16,
    rss: bool,
    /// One bit per queue handed out, so each queue has exactly one user.
    rx_claimed: AtomicU64,
    tx_claimed: AtomicU64,
    _pool: Arc<Mempool>,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        // SAFETY: the last handle to the port is gone, so no queue of it is
        // being polled; stop and close release the rings and their buffers.
        let stop = unsafe { dpdk_sys::rte_eth_dev_stop(self.id.0) };
        if let Err(err) = check("rte_eth_dev_stop", stop, || self.name.clone()) {
            tracing::warn!(%err, "port stop");
        }
        // SAFETY: as above; the port is stopped.
        let close = unsafe { dpdk_sys::rte_eth_dev_close(self.id.0) };
        if let Err(err) = check("rte_eth_dev_close", close, || self.name.clone()) {
            tracing::warn!(%err, "port close");
        }
    }
}

/// A configured and started port. Cloning shares it; the port is stopped and
/// closed when the last clone and the last of its queues are dropped.
#[derive(Clone, Debug)]
pub struct Port {
    inner: Arc<PortInner>,
}

impl Port {
    /// Finds a port by its device name (e.g. `net_af_packet0`).
    ///
    /// # Errors
    /// When no probed device has that name.
    pub fn id_by_name(_eal: &Eal, name: &str) -> Result<PortId, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError {
            call: "rte_eth_dev_get_port_by_name",
            errno: 22,
            context: format!("{name:?} contains a NUL byte"),
        })?;
        let mut id = 0u16;
        // SAFETY: `cname` is a valid C string; `id` is a valid out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        check("rte_eth_dev_get_port_by_name", ret, || name.to_owned())?;
        Ok(PortId(id))
    }

    /// Configures queues and RSS, sets up the rings and starts the port.
    ///
    /// # Errors
    /// When the device cannot offer the queues asked for or refuses a setting.
    pub fn start(
        _eal: &Eal,
        id: PortId,
        name: &str,
        config: &PortConfig,
        pool: Arc<Mempool>,
    ) -> Result<Port, DpdkError> {
        let ctx = || format!("{name} ({id})");
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: `info` is a valid out-pointer of the right type.
        let ret = unsafe { dpdk_sys::rte_eth_dev_info_get(id.0, &mut info) };
        check("rte_eth_dev_info_get", ret, ctx)?;
        if config.rx_queues > info.max_rx_queues || config.tx_queues > info.max_tx_queues {
            return Err(DpdkError {
                call: "rte_eth_dev_configure",
                errno: 22,
                context: format!(
                    "{}: {} rx / {} tx queues asked for, the device offers at most {} / {}",
                    ctx(),
                    config.rx_queues,
                    config.tx_queues,
                    info.max_rx_queues,
                    info.max_tx_queues
                ),
            });
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null driver_name points at the driver's static name.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };

        let mut key = SYMMETRIC_RSS_KEY;
        let rss_hf = info.flow_type_rss_offloads & rss::WANTED;
        let rss = config.rx_queues > 1 && rss_hf != 0;
        let mut conf = dpdk_sys::rte_eth_conf::default();
        if rss {
            conf.rxmode.mq_mode = dpdk_sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len = match info.hash_key_size {
                0 => 40,
                n => n.min(52),
            };
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // SAFETY: `conf` is fully initialised and `key` outlives the call
        // (DPDK copies the key during configure).
        let ret = unsafe {
            dpdk_sys::rte_eth_dev_configure(id.0, config.rx_queues, config.tx_queues, &conf)
        };
        check("rte_eth_dev_configure", ret, ctx)?;

        let (mut rx_ring, mut tx_ring) = (config.rx_ring, config.tx_ring);
        // SAFETY: valid port and out-pointers.
        let ret =
            unsafe { dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(id.0, &mut rx_ring, &mut tx_ring) };
        check("rte_eth_dev_adjust_nb_rx_tx_desc", ret, ctx)?;

        // SAFETY: a valid, configured port id.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id.0) };
        // SOCKET_ID_ANY (-1) when the device has no NUMA affinity.
        let socket = u32::try_from(socket).unwrap_or(u32::MAX);
        for q in 0..config.rx_queues {
            // SAFETY: the port is configured with this many queues; a NULL
            // rxconf means the driver defaults; `pool` stays alive as long as
            // the port (held by PortInner).
            let ret = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    id.0,
                    q,
                    rx_ring,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            check("rte_eth_rx_queue_setup", ret, || {
                format!("{} queue {q}", ctx())
            })?;
        }
        for q in 0..config.tx_queues {
            // SAFETY: as above; NULL txconf means the driver defaults.
            let ret = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(id.0, q, tx_ring, socket, std::ptr::null())
            };
            check("rte_eth_tx_queue_setup", ret, || {
                format!("{} queue {q}", ctx())
            })?;
        }
        if let Some(mtu) = config.mtu {
            // SAFETY: valid configured port.
            let ret = unsafe { dpdk_sys::rte_eth_dev_set_mtu(id.0, mtu) };
            check("rte_eth_dev_set_mtu", ret, ctx)?;
        }
        // SAFETY: valid configured port with all queues set up.
        let ret = unsafe { dpdk_sys::rte_eth_dev_start(id.0) };
        check("rte_eth_dev_start", ret, ctx)?;
        if config.promiscuous {
            // SAFETY: valid started port. Not every PMD supports it; that is only logged.
            let ret = unsafe { dpdk_sys::rte_eth_promiscuous_enable(id.0) };
            if let Err(err) = check("rte_eth_promiscuous_enable", ret, ctx) {
                tracing::warn!(%err, "continuing without promiscuous mode");
            }
        }
        // IPv6 neighbour discovery needs multicast frames.
        // SAFETY: valid started port.
        let ret = unsafe { dpdk_sys::rte_eth_allmulticast_enable(id.0) };
        if let Err(err) = check("rte_eth_allmulticast_enable", ret, ctx) {
            tracing::debug!(%err, "all-multicast not supported");
        }

        let mut mac = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port and out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_macaddr_get(id.0, &mut mac) };
        check("rte_eth_macaddr_get", ret, ctx)?;
        Ok(Port {
            inner: Arc::new(PortInner {
                id,
                name: name.to_owned(),
                driver,
                mac: mac.addr_bytes,
                rx_queues: config.rx_queues,
                tx_queues: config.tx_queues,
                rss,
                rx_claimed: AtomicU64::new(0),
                tx_claimed: AtomicU64::new(0),
                _pool: pool,
            }),
        })
    }

    /// The port id.
    pub fn id(&self) -> PortId {
        self.inner.id
    }

    /// The name it was configured under.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The driver's name (e.g. `net_af_packet`).
    pub fn driver(&self) -> &str {
        &self.inner.driver
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac
    }

    /// Whether the device spreads packets over queues with the symmetric RSS key.
    pub fn rss_enabled(&self) -> bool {
        self.inner.rss
    }

    /// Number of receive queues.
    pub fn rx_queue_count(&self) -> u16 {
        self.inner.rx_queues
    }

    /// Number of transmit queues.
    pub fn tx_queue_count(&self) -> u16 {
        self.inner.tx_queues
    }

    /// Hands out receive queue `queue`; each queue can be taken once, so only
    /// one thread ever polls it (DPDK queues are not thread-safe).
    pub fn rx_queue(&self, queue: u16) -> Option<RxQueue> {
        claim(&self.inner.rx_claimed, queue, self.inner.rx_queues).then(|| RxQueue {
            port: self.inner.clone(),
            queue,
        })
    }

    /// Hands out transmit queue `queue`, once, like [`Port::rx_queue`].
    pub fn tx_queue(&self, queue: u16) -> Option<TxQueue> {
        claim(&self.inner.tx_claimed, queue, self.inner.tx_queues).then(|| TxQueue {
            port: self.inner.clone(),
            queue,
            pending: [std::ptr::null_mut(); BURST_SIZE],
            len: 0,
            dropped: 0,
        })
    }

    /// The link state, without waiting for autonegotiation.
    pub fn link(&self) -> LinkStatus {
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: valid port and out-pointer.
        let ret = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.inner.id.0, &mut link) };
        if ret < 0 {
            return LinkStatus {
                up: false,
                speed_mbps: 0,
            };
        }
        LinkStatus {
            up: link.link_status() != 0,
            speed_mbps: if link.link_speed == u32::MAX {
                0
            } else {
                link.link_speed
            },
        }
    }

    /// Reads the basic counters.
    ///
    /// # Errors
    /// When the driver cannot report them.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: valid port and out-pointer; reading stats while workers poll
        // is supported by DPDK (counters are read, not reset).
        let ret = unsafe { dpdk_sys::rte_eth_stats_get(self.inner.id.0, &mut s) };
        check("rte_eth_stats_get", ret, || self.inner.name.clone())?;
        let rxq = usize::from(self.inner.rx_queues).min(s.q_ipackets.len());
        let txq = usize::from(self.inner.tx_queues).min(s.q_opackets.len());
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
            queue_rx_packets: s.q_ipackets[..rxq].to_vec(),
            queue_tx_packets: s.q_opackets[..txq].to_vec(),
            queue_rx_bytes: s.q_ibytes[..rxq].to_vec(),
            queue_tx_bytes: s.q_obytes[..txq].to_vec(),
        })
    }

    /// Reads the driver's extended counters as (name, value) pairs.
    ///
    /// # Errors
    /// When the driver cannot report them.
    pub fn xstats(&self) -> Result<Vec<(String, u64)>, DpdkError> {
        let id = self.inner.id.0;
        let name = || self.inner.name.clone();
        // SAFETY: a NULL array with size 0 asks for the count only.
        let count = unsafe { dpdk_sys::rte_eth_xstats_get_names(id, std::ptr::null_mut(), 0) };
        check("rte_eth_xstats_get_names", count, name)?;
        let n = count as usize;
        let mut names = vec![dpdk_sys::rte_eth_xstat_name { name: [0; 64] }; n];
        let mut values = vec![dpdk_sys::rte_eth_xstat::default(); n];
        // SAFETY: both arrays hold `n` elements, as the calls are told.
        let got_names =
            unsafe { dpdk_sys::rte_eth_xstats_get_names(id, names.as_mut_ptr(), n as u32) };
        check("rte_eth_xstats_get_names", got_names, name)?;
        // SAFETY: as above.
        let got = unsafe { dpdk_sys::rte_eth_xstats_get(id, values.as_mut_ptr(), n as u32) };
        check("rte_eth_xstats_get", got, name)?;
        let got = (got as usize).min(got_names as usize).min(n);
        Ok(values[..got]
            .iter()
            .filter_map(|v| {
                let entry = names.get(v.id as usize)?;
                // SAFETY: DPDK NUL-terminates every name within its 64 bytes.
                let text = unsafe { CStr::from_ptr(entry.name.as_ptr()) }
                    .to_string_lossy()
                    .into_owned();
                Some((text, v.value))
            })
            .collect())
    }
}

fn claim(bits: &AtomicU64, queue: u16, count: u16) -> bool {
    if queue >= count || queue >= 64 {
        return false;
    }
    let bit = 1u64 << queue;
    bits.fetch_or(bit, Ordering::AcqRel) & bit == 0
}

/// The one handle allowed to poll a receive queue.
#[derive(Debug)]
pub struct RxQueue {
    port: Arc<PortInner>,
    queue: u16,
}

impl RxQueue {
    /// The port this queue belongs to.
    pub fn port_id(&self) -> PortId {
        self.port.id
    }

    /// The queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receives up to `max` (at most [`BURST_SIZE`]) packets into `burst`
    /// (whose leftovers are freed first).
    #[inline]
    pub fn rx_burst(&mut self, burst: &mut RxBurst, max: usize) -> usize {
        let slots = burst.refill_slots();
        let max = max.min(BURST_SIZE) as u16;
        // SAFETY: `self` is the only handle to this queue (claimed once), the
        // port outlives it (Arc), and `slots` has room for BURST_SIZE >= max pointers.
        let n = unsafe {
            dpdk_sys::shim_rte_eth_rx_burst(self.port.id.0, self.queue, slots.as_mut_ptr(), max)
        };
        burst.set_received(usize::from(n));
        usize::from(n)
    }
}

/// The one handle allowed to send on a transmit queue, with a small buffer so
/// that packets leave in bursts.
#[derive(Debug)]
pub struct TxQueue {
    port: Arc<PortInner>,
    queue: u16,
    pending: [*mut dpdk_sys::rte_mbuf; BURST_SIZE],
    len: usize,
    dropped: u64,
}

// SAFETY: the queue handle is unique (claimed once) and owns the buffered
// mbufs; moving it to the worker thread that uses it is fine.
unsafe impl Send for TxQueue {}

impl TxQueue {
    /// The port this queue belongs to.
    pub fn port_id(&self) -> PortId {
        self.port.id
    }

    /// The queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Packets dropped so far because the ring stayed full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Packets waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Queues a packet, sending the buffer when it is full.
    #[inline]
    pub fn push(&mut self, mbuf: Mbuf) {
        if self.len == BURST_SIZE {
            self.flush();
        }
        self.pending[self.len] = mbuf.into_raw();
        self.len += 1;
    }

    /// Sends whatever is buffered; what the ring does not take is freed and
    /// counted as dropped (a full ring must never stall the worker).
    #[inline]
    pub fn flush(&mut self) -> usize {
        if self.len == 0 {
            return 0;
        }
        // SAFETY: pending[..len] are mbufs we own; the queue is ours alone and
        // the port outlives it; tx_burst takes ownership of the first `sent`.
        let sent = usize::from(unsafe {
            dpdk_sys::shim_rte_eth_tx_burst(
                self.port.id.0,
                self.queue,
                self.pending.as_mut_ptr(),
                self.len as u16,
            )
        });
        for &raw in &self.pending[sent..self.len] {
            // SAFETY: the driver did not take these; they are still ours to free.
            unsafe { dpdk_sys::shim_rte_pktmbuf_free(raw) };
        }
        self.dropped += (self.len - sent) as u64;
        self.len = 0;
        sent
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        self.flush();
    }
}
