//! A burst: the frames of one pass of the pipeline with a record each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::paths::NO_UPLINK;
use crate::flow::table::FlowId;
use crate::packet::flow_key::{Direction, FlowKey};
use crate::packet::parse::{PacketMeta, ParseError};
use crate::qos::Class;
use crate::BURST_SIZE;

/// Where a packet goes next: the stage that takes it, or, once the stages
/// are done, what the worker does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A frame from a port: to be parsed.
    Parse,
    /// Parsed: to be judged on its headers alone.
    Admit,
    /// A WireGuard message for the tunnel's listen port: the UDP payload
    /// starts at `payload`; its source is the slot's address.
    Decrypt {
        /// Offset of the UDP payload in the frame.
        payload: u16,
    },
    /// Addressed to the gateway itself.
    Local,
    /// A BFD Control packet for the session of `uplink` with its router.
    UplinkBfd {
        /// The uplink, by its index in the path table.
        uplink: u8,
    },
    /// To be forwarded: flow, classification, route.
    Forward,
    /// A packet the gateway built (a reply or an error) for a destination
    /// that needs a route: routed like a forwarded packet, without a flow.
    Route,
    /// An IP packet behind its Ethernet header, to be encrypted for `peer`.
    Encrypt {
        /// The tunnel peer cryptokey routing chose.
        peer: u32,
    },
    /// A WireGuard message (no headers) to the slot's address: outer
    /// headers and a way out still to be found.
    Datagram,
    /// Routed out of `port` to the next hop `dst_mac`: MACs and padding still
    /// to be written.
    Rewrite {
        /// Outgoing port.
        port: u16,
        /// Next hop's MAC.
        dst_mac: [u8; 6],
    },
    /// Headers complete: send out of `port`.
    Transmit(u16),
    /// Ready but for the MAC of `next_hop` on `port`: hold it until that resolves.
    Resolve {
        /// Outgoing port.
        port: u16,
        /// The address to resolve.
        next_hop: IpAddr,
    },
    /// Left the burst: consumed, handed to another worker, or dropped and counted.
    Gone,
}

/// A packet's flow, once the flow stage has found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRef {
    /// The flow table entry.
    pub id: FlowId,
    /// Which way this packet travels in it.
    pub dir: Direction,
}

/// How an egress shaper queues a packet: by its class, the tunnel slot it
/// is charged to and its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaping {
    /// Its class: the flow's, from DPI and policy.
    pub class: Class,
    /// The shaper's tunnel slot: 0 for packets that leave unencrypted,
    /// else the peer's ([`crate::config::qos::TunnelSlots`]).
    pub tunnel: u16,
    /// Its flow's hash (0 for packets outside a flow).
    pub flow_hash: u32,
    /// The DSCP of its outer header when it leaves as a tunnel datagram:
    /// the inner packet's, read as it is sealed, so that the WAN's own QoS
    /// sees the class.
    pub dscp: u8,
}

impl Shaping {
    /// Packets outside any flow: unclassified.
    pub const NONE: Shaping = Shaping {
        class: Class::Standard,
        tunnel: 0,
        flow_hash: 0,
        dscp: 0,
    };

    /// What the tunnel engine sends on its own (handshakes, keepalives,
    /// probes, and the packets a handshake released): small and rare, and
    /// what measures a path must not wait behind the bulk of it.
    pub const CONTROL: Shaping = Shaping {
        class: Class::RealTime,
        tunnel: 0,
        flow_hash: 1,
        dscp: 0,
    };
}

/// The small per-packet record the stages write.
#[derive(Clone, Copy, Debug)]
pub(super) struct Meta {
    pub next: Next,
    /// The port it arrived on (the tunnel port for decrypted packets).
    pub in_port: u16,
    /// Length of its IP packet, for the MTU check and flow accounting.
    pub ip_len: u16,
    pub flow: Option<FlowRef>,
}

const EMPTY_META: Meta = Meta {
    next: Next::Gone,
    in_port: 0,
    ip_len: 0,
    flow: None,
};

/// Up to [`BURST_SIZE`] frames and their records, reused pass after pass:
/// allocated once per worker, never per packet.
pub struct Burst<F> {
    len: usize,
    pub(super) frames: [Option<F>; BURST_SIZE],
    pub(super) meta: [Meta; BURST_SIZE],
    /// What `parse` found (for a decrypted packet: in the inner packet).
    pub(super) headers: [Result<PacketMeta, ParseError>; BURST_SIZE],
    /// The far end of a datagram: its source for `Decrypt`, its destination for `Datagram`.
    pub(super) addr: [SocketAddr; BURST_SIZE],
    /// How `encrypt` steers a packet over its peer's paths: the policy rule
    /// that routes its flow and the flow's hash; 0 for the default path.
    pub(super) steer: [u64; BURST_SIZE],
    /// How an egress shaper queues the packet.
    pub(super) shaping: [Shaping; BURST_SIZE],
    /// The uplink a datagram came in by (`Decrypt`) or leaves by
    /// (`Datagram`); [`NO_UPLINK`]: unknown, or follow the routes.
    pub(super) uplink: [u8; BURST_SIZE],
    /// The flow stage's scratch: the keys it looks up and whose they are.
    pub(super) keys: [FlowKey; BURST_SIZE],
    pub(super) keyed: [u8; BURST_SIZE],
}

impl<F> std::fmt::Debug for Burst<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Burst")
            .field("len", &self.len)
            .field("next", &self.next_all().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<F> Default for Burst<F> {
    fn default() -> Self {
        Burst {
            len: 0,
            frames: std::array::from_fn(|_| None),
            meta: [EMPTY_META; BURST_SIZE],
            headers: [Err(ParseError::TruncatedEthernet); BURST_SIZE],
            addr: [SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)); BURST_SIZE],
            uplink: [NO_UPLINK; BURST_SIZE],
            steer: [0; BURST_SIZE],
            shaping: [Shaping::NONE; BURST_SIZE],
            keys: [FlowKey::default(); BURST_SIZE],
            keyed: [0; BURST_SIZE],
        }
    }
}

impl<F> Burst<F> {
    /// An empty burst, on the heap (it is a few kilobytes).
    pub fn boxed() -> Box<Self> {
        Box::default()
    }

    /// Frames in the burst.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the burst holds no frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more frames fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == BURST_SIZE
    }

    /// Adds a frame received on `port`. Gives it back when the burst is full.
    #[inline]
    pub fn push_received(&mut self, port: u16, frame: F) -> Result<(), F> {
        self.push(frame, Next::Parse, port)
    }

    /// Adds an IP packet (behind an Ethernet header) to be encrypted for
    /// `peer`, steered by `steer` and shaped by `shaping`, as another worker
    /// handed it over.
    pub fn push_encrypt(
        &mut self,
        peer: u32,
        steer: u64,
        shaping: Shaping,
        frame: F,
    ) -> Result<(), F> {
        let i = self.len;
        self.push(frame, Next::Encrypt { peer }, 0)?;
        self.steer[i] = steer;
        self.shaping[i] = shaping;
        Ok(())
    }

    /// Adds a WireGuard message that arrived from `from` over `uplink` (the
    /// UDP payload alone), as another worker handed it over.
    pub fn push_decrypt(&mut self, from: SocketAddr, uplink: u8, frame: F) -> Result<(), F> {
        let i = self.len;
        self.push(frame, Next::Decrypt { payload: 0 }, 0)?;
        self.addr[i] = from;
        self.uplink[i] = uplink;
        Ok(())
    }

    /// Adds a WireGuard message to send to `to` over `uplink` (an index
    /// of the path table's uplinks, or [`NO_UPLINK`] to follow the routes).
    pub(super) fn push_datagram(
        &mut self,
        to: SocketAddr,
        uplink: u8,
        shaping: Shaping,
        frame: F,
    ) -> Result<(), F> {
        let i = self.len;
        self.push(frame, Next::Datagram, 0)?;
        self.addr[i] = to;
        self.uplink[i] = uplink;
        self.shaping[i] = shaping;
        Ok(())
    }

    #[inline]
    fn push(&mut self, frame: F, next: Next, in_port: u16) -> Result<(), F> {
        if self.is_full() {
            return Err(frame);
        }
        let i = self.len;
        self.frames[i] = Some(frame);
        self.uplink[i] = NO_UPLINK;
        self.steer[i] = 0;
        self.shaping[i] = Shaping::NONE;
        self.meta[i] = Meta {
            next,
            in_port,
            ip_len: 0,
            flow: None,
        };
        self.len += 1;
        Ok(())
    }

    /// Adds a frame the gateway built whole (headers included) that goes
    /// out as `next` says (transmit, or wait for a next hop), shaped as
    /// network control.
    pub(super) fn push_ready(&mut self, next: Next, frame: F) -> Result<(), F> {
        let i = self.len;
        self.push(frame, next, 0)?;
        self.shaping[i] = Shaping::CONTROL;
        Ok(())
    }

    /// Each frame's next step, in order (after [`super::Pipeline::run`]: what
    /// the worker does with it).
    pub fn next_all(&self) -> impl Iterator<Item = Next> + '_ {
        self.meta[..self.len].iter().map(|m| m.next)
    }

    /// Empties the burst, handing each remaining frame, its final step and
    /// its shaping to `out` in order. Frames that left ([`Next::Gone`]) are
    /// skipped.
    pub fn drain(&mut self, mut out: impl FnMut(Next, Shaping, F)) {
        for i in 0..self.len {
            if let Some(frame) = self.frames[i].take() {
                out(self.meta[i].next, self.shaping[i], frame);
            }
        }
        self.len = 0;
    }

    /// Takes slot `i`'s frame out of the burst, marking it gone.
    #[inline]
    pub(super) fn take(&mut self, i: usize) -> Option<F> {
        self.meta[i].next = Next::Gone;
        self.frames[i].take()
    }

    /// Drops slot `i`'s frame (the caller has counted why).
    #[inline]
    pub(super) fn discard(&mut self, i: usize) {
        drop(self.take(i));
    }

    /// Slot `i`'s frame. Only for slots that hold one.
    #[inline]
    pub(super) fn frame(&self, i: usize) -> &F {
        self.frames[i]
            .as_ref()
            .expect("every slot a stage works on holds its frame")
    }

    /// Slot `i`'s frame, writable. Only for slots that hold one.
    #[inline]
    pub(super) fn frame_mut(&mut self, i: usize) -> &mut F {
        self.frames[i]
            .as_mut()
            .expect("every slot a stage works on holds its frame")
    }

    /// Slot `i`'s frame and parsed headers together.
    #[inline]
    pub(super) fn frame_and_headers(&mut self, i: usize) -> (&mut F, &PacketMeta) {
        let frame = self.frames[i]
            .as_mut()
            .expect("every slot a stage works on holds its frame");
        let headers = self.headers[i]
            .as_ref()
            .expect("only parsed packets get past parse");
        (frame, headers)
    }

    /// Slots of a pass that a stage may look at.
    #[inline]
    pub(super) fn slots(&self) -> std::ops::Range<usize> {
        0..self.len
    }

    /// Puts `frame` back into slot `i` with a new next step.
    #[inline]
    pub(super) fn put(&mut self, i: usize, frame: F, next: Next) {
        self.frames[i] = Some(frame);
        self.meta[i].next = next;
    }
}
