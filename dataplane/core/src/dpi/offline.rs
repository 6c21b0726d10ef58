//! Offline classification of capture files: `patronus-dataplane classify`.
//!
//! Reads pcap and pcapng files (link types Ethernet, Linux cooked v1/v2,
//! raw IP, BSD loopback, PPP and Cisco HDLC), runs every TCP and UDP flow
//! through the same [`Inspector`] the workers use and writes one CSV row
//! per flow. A flow is one capture's packets of one protocol between one
//! unordered pair of endpoints; `a` is the source of its first packet.
//!
//! Captures are what a host saw, not what a gateway receives: headers may
//! be cut short by the snap length and IPv4 checksums left to offload
//! hardware. Each frame is therefore normalised (lengths clamped to what was
//! captured, the IPv4 header checksum recomputed) before it is parsed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context as _};
use etherparse::Ipv4HeaderSlice;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::DataLink;

use super::{Classification, Classifier, FlowInspection, Inspector, Limits, Packet, Protocol};
use crate::packet::flow_key::FlowKey;
use crate::packet::parse::{parse, L3, L4};

/// The CSV header of `classify --csv`.
pub const CSV_HEADER: &str = "pcap,proto,addr_a,port_a,addr_b,port_b,category,application,method";

/// The time offline: one capture is one moment, so no answer it holds
/// expires within it (the names seen are forgotten between captures).
const NO_CLOCK: u64 = 0;

/// Ethertypes used when re-framing non-Ethernet captures.
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// One flow of one capture.
#[derive(Debug)]
struct Flow {
    tcp: bool,
    a: (IpAddr, u16),
    b: (IpAddr, u16),
    inspection: FlowInspection,
    verdict: Option<Classification>,
}

/// Totals over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Capture files read.
    pub files: u64,
    /// Frames read.
    pub frames: u64,
    /// Captured frame bytes.
    pub bytes: u64,
    /// Frames that were not TCP or UDP, or did not parse.
    pub skipped: u64,
    /// Flows written.
    pub flows: u64,
}

/// Classifies captures and writes CSV rows to `out` (header first).
pub struct OfflineClassifier<'c> {
    classifier: &'c Classifier,
    inspector: Inspector,
    frame: Vec<u8>,
    /// The capture being read.
    file: Vec<u8>,
    totals: Totals,
}

impl<'c> OfflineClassifier<'c> {
    /// A classifier run with the given inspection limits.
    pub fn new(classifier: &'c Classifier, limits: Limits) -> Self {
        OfflineClassifier {
            classifier,
            inspector: Inspector::new(limits, 1024),
            frame: Vec::with_capacity(65_536),
            file: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// Totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Classifies one capture file and appends its rows to `out`.
    pub fn classify_file(&mut self, path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name", path.display()))?
            .to_owned();
        if name.contains([',', '"', '\n']) {
            bail!(
                "{}: file names with commas, quotes or newlines are not supported in CSV output",
                path.display()
            );
        }
        // One capture at a time in memory, in a buffer reused across files:
        // the streaming readers zero an 8 MB buffer per file, which costs more
        // than classifying a small capture.
        let mut data = std::mem::take(&mut self.file);
        let mut flows: HashMap<FlowKey, Flow, ahash::RandomState> = HashMap::default();
        self.inspector.forget_context();
        let mut order: Vec<FlowKey> = Vec::new();
        let read = read_capture(path, &mut data, |link, frame| {
            self.totals.frames += 1;
            self.totals.bytes += frame.len() as u64;
            if !self.frame_to_flow(link, frame, &mut flows, &mut order) {
                self.totals.skipped += 1;
            }
        });
        self.file = data;
        read?;
        self.totals.files += 1;
        for key in order {
            let Some(mut flow) = flows.remove(&key) else {
                continue;
            };
            let verdict = match flow.verdict {
                Some(v) => v,
                None => {
                    let v = self.inspector.finish(&mut flow.inspection);
                    let ends = [flow.b.0, flow.a.0];
                    self.inspector
                        .recall_name(self.classifier, v, ends, NO_CLOCK)
                }
            };
            writeln!(
                out,
                "{name},{},{},{},{},{},{},{},{}",
                if flow.tcp { "TCP" } else { "UDP" },
                flow.a.0,
                flow.a.1,
                flow.b.0,
                flow.b.1,
                self.classifier.category(&verdict),
                self.classifier.name(&verdict),
                verdict.method,
            )?;
            self.totals.flows += 1;
        }
        Ok(())
    }

    /// Re-frames, parses and inspects one captured frame; false when it carries no TCP/UDP flow.
    fn frame_to_flow(
        &mut self,
        link: DataLink,
        data: &[u8],
        flows: &mut HashMap<FlowKey, Flow, ahash::RandomState>,
        order: &mut Vec<FlowKey>,
    ) -> bool {
        if !to_ethernet(link, data, &mut self.frame) {
            return false;
        }
        let Ok(meta) = parse(&self.frame) else {
            return false;
        };
        let (tcp, src_port, dst_port) = match meta.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            } => (true, src_port, dst_port),
            L4::Udp { src_port, dst_port } => (false, src_port, dst_port),
            _ => return false,
        };
        let (src, dst): (IpAddr, IpAddr) = match meta.l3 {
            L3::Ipv4(ip) => (ip.src.into(), ip.dst.into()),
            L3::Ipv6(ip) => (ip.src.into(), ip.dst.into()),
            L3::Arp(_) => return false,
        };
        let Some((key, dir)) = meta.flow_key() else {
            return false;
        };
        let flow = flows.entry(key).or_insert_with(|| {
            order.push(key);
            Flow {
                tcp,
                a: (src, src_port),
                b: (dst, dst_port),
                inspection: FlowInspection::default(),
                verdict: None,
            }
        });
        let payload = super::l4_payload(&self.frame, &meta).unwrap_or(&[]);
        let answer = !tcp && src_port == 53;
        if flow.verdict.is_none() && self.inspector.awaits_announced() {
            flow.verdict = self.inspector.announced(
                &mut flow.inspection,
                tcp,
                (src, src_port),
                (dst, dst_port),
                NO_CLOCK,
            );
        }
        if flow.verdict.is_none() {
            let packet = Packet {
                seq: super::tcp_seq(&self.frame, &meta),
                tcp,
                src_port,
                dst_port,
                dir,
                payload,
            };
            flow.verdict = self
                .inspector
                .inspect(self.classifier, &mut flow.inspection, &packet)
                .map(|v| {
                    self.inspector
                        .recall_name(self.classifier, v, [dst, src], NO_CLOCK)
                });
        }
        match flow.verdict {
            Some(v) if answer && v.protocol == Some(Protocol::Dns) => {
                self.inspector.learn_names(
                    self.classifier,
                    &mut flow.inspection,
                    payload,
                    NO_CLOCK,
                );
            }
            Some(v) => {
                if let Some(announcer) = self.classifier.announcer(&v) {
                    self.inspector.learn_announced(
                        announcer,
                        payload,
                        [src, dst],
                        NO_CLOCK,
                        |_| {},
                    );
                }
            }
            _ => {}
        }
        true
    }
}

/// Reads a pcap or pcapng file into `data` (reused between calls) and hands
/// each frame with its link type to `on_frame`. A corrupt or truncated record
/// ends the file with a warning; a file that is no capture at all is an error.
pub fn read_capture(
    path: &Path,
    data: &mut Vec<u8>,
    mut on_frame: impl FnMut(DataLink, &[u8]),
) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    data.clear();
    file.read_to_end(data)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let truncated = |what: &str, e: pcap_file::PcapError| {
        tracing::warn!(file = %path.display(), error = %e, "{what}: the rest of the file is skipped");
    };
    if data.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let (mut rest, mut ng) = PcapNgParser::new(data)
            .with_context(|| format!("{}: not a pcapng file", path.display()))?;
        // Link types of the section's interfaces, by interface id.
        let mut links: Vec<DataLink> = Vec::new();
        while !rest.is_empty() {
            let block = match ng.next_block(rest) {
                Ok((tail, block)) => {
                    rest = tail;
                    block
                }
                Err(e) => {
                    truncated("corrupt or truncated pcapng block", e);
                    break;
                }
            };
            let (link, frame) = match &block {
                Block::SectionHeader(_) => {
                    links.clear();
                    continue;
                }
                Block::InterfaceDescription(iface) => {
                    links.push(iface.linktype);
                    continue;
                }
                Block::EnhancedPacket(p) => match links.get(p.interface_id as usize) {
                    Some(&link) => (link, p.data.as_ref()),
                    None => continue,
                },
                Block::SimplePacket(p) => match links.first() {
                    Some(&link) => (link, p.data.as_ref()),
                    None => continue,
                },
                _ => continue,
            };
            on_frame(link, frame);
        }
    } else {
        let (mut rest, pcap) = PcapParser::new(data)
            .with_context(|| format!("{}: neither pcap nor pcapng", path.display()))?;
        let link = pcap.header().datalink;
        // Raw records: real captures often declare an original length
        // beyond the snap length, which the checked parser refuses.
        while !rest.is_empty() {
            match pcap.next_raw_packet(rest) {
                Ok((tail, packet)) => {
                    rest = tail;
                    on_frame(link, &packet.data);
                }
                Err(e) => {
                    truncated("corrupt or truncated pcap record", e);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Turns a captured frame of any supported link type into an Ethernet II
/// frame in `out` that the data-plane parser accepts: encapsulations removed,
/// lengths clamped to what was captured, the IPv4 header checksum recomputed.
/// False for link types or protocols not handled.
pub fn to_ethernet(link: DataLink, data: &[u8], out: &mut Vec<u8>) -> bool {
    if !reframe(link, data, out) {
        return false;
    }
    normalise(out);
    true
}

/// Copies a captured frame into `out` as an Ethernet II frame; false for link types or protocols not handled.
fn reframe(link: DataLink, data: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let (ethertype, ip) = match link {
        DataLink::ETHERNET => match strip_encapsulation(data) {
            Some((ethertype, ip)) => (ethertype, ip),
            None => {
                out.extend_from_slice(data);
                return true;
            }
        },
        DataLink::LINUX_SLL => match data.get(14..16) {
            Some(t) => (u16::from_be_bytes([t[0], t[1]]), &data[16..]),
            None => return false,
        },
        DataLink::LINUX_SLL2 => match (data.get(..2), data.get(20..)) {
            (Some(t), Some(ip)) => (u16::from_be_bytes([t[0], t[1]]), ip),
            _ => return false,
        },
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => match by_version(data) {
            Some(t) => (t, data),
            None => return false,
        },
        DataLink::NULL | DataLink::LOOP => {
            // The address family, in the capturing host's byte order (NULL) or network order (LOOP).
            let Some(ip) = data.get(4..) else {
                return false;
            };
            match by_version(ip) {
                Some(t) => (t, ip),
                None => return false,
            }
        }
        DataLink::PPP | DataLink::PPP_HDLC | DataLink::C_HDLC => {
            // Optional HDLC address/control (0xff 0x03, or Cisco's 0x0f/0x8f 0x00), then the protocol.
            let body = match data {
                [0xff, 0x03, rest @ ..] | [0x0f | 0x8f, 0x00, rest @ ..] => rest,
                _ => data,
            };
            let Some(proto) = body.get(..2) else {
                return false;
            };
            let ethertype = match u16::from_be_bytes([proto[0], proto[1]]) {
                0x0021 | ETHERTYPE_IPV4 => ETHERTYPE_IPV4,
                0x0057 | ETHERTYPE_IPV6 => ETHERTYPE_IPV6,
                _ => return false,
            };
            (ethertype, &body[2..])
        }
        _ => return false,
    };
    out.extend_from_slice(&[0u8; 12]);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(ip);
    true
}

/// Looks through VLAN tags, PPPoE sessions and MPLS labels of an Ethernet
/// frame to the IP packet inside; None when there are none (or no IP inside).
fn strip_encapsulation(frame: &[u8]) -> Option<(u16, &[u8])> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut rest = frame.get(14..)?;
    let mut stripped = false;
    for _ in 0..8 {
        match ethertype {
            0x8100 | 0x88a8 | 0x9100 => {
                ethertype = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
                rest = rest.get(4..)?;
            }
            0x8864 => {
                // PPPoE session header (6 bytes), then the PPP protocol.
                ethertype = match u16::from_be_bytes([*rest.get(6)?, *rest.get(7)?]) {
                    0x0021 => ETHERTYPE_IPV4,
                    0x0057 => ETHERTYPE_IPV6,
                    _ => return None,
                };
                rest = rest.get(8..)?;
            }
            0x8847 | 0x8848 => {
                // MPLS labels up to the bottom of the stack, then IP by version.
                loop {
                    let bottom = rest.get(2)? & 1 == 1;
                    rest = rest.get(4..)?;
                    if bottom {
                        break;
                    }
                }
                ethertype = by_version(rest)?;
            }
            _ => break,
        }
        stripped = true;
    }
    (stripped && matches!(ethertype, ETHERTYPE_IPV4 | ETHERTYPE_IPV6)).then_some((ethertype, rest))
}

/// The ethertype for an IP packet, from its version nibble.
fn by_version(ip: &[u8]) -> Option<u16> {
    match ip.first()? >> 4 {
        4 => Some(ETHERTYPE_IPV4),
        6 => Some(ETHERTYPE_IPV6),
        _ => None,
    }
}

/// Clamps IP and UDP length fields to the captured bytes and recomputes the IPv4 header checksum.
fn normalise(frame: &mut [u8]) {
    let mut at = 12;
    let mut ethertype = 0;
    for _ in 0..3 {
        let Some(t) = frame.get(at..at + 2) else {
            return;
        };
        ethertype = u16::from_be_bytes([t[0], t[1]]);
        if !matches!(ethertype, 0x8100 | 0x88a8) {
            break;
        }
        at += 4;
    }
    let l3 = at + 2;
    let available = frame.len().saturating_sub(l3);
    let (l4, proto, ip_len) = match ethertype {
        ETHERTYPE_IPV4 => {
            let Ok(header) = Ipv4HeaderSlice::from_slice(&frame[l3..]) else {
                return;
            };
            let mut header = header.to_header();
            let total = usize::from(header.total_len);
            let clamped = total.min(available) as u16;
            header.total_len = clamped;
            header.header_checksum = header.calc_header_checksum();
            frame[l3 + 2..l3 + 4].copy_from_slice(&clamped.to_be_bytes());
            frame[l3 + 10..l3 + 12].copy_from_slice(&header.header_checksum.to_be_bytes());
            let first = header.fragment_offset.value() == 0;
            if !first {
                return;
            }
            (
                l3 + header.header_len(),
                header.protocol.0,
                usize::from(clamped),
            )
        }
        ETHERTYPE_IPV6 => {
            if available < 40 {
                return;
            }
            let payload = usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]));
            let clamped = payload.min(available - 40) as u16;
            frame[l3 + 4..l3 + 6].copy_from_slice(&clamped.to_be_bytes());
            (l3 + 40, frame[l3 + 6], 40 + usize::from(clamped))
        }
        _ => return,
    };
    // UDP directly after the IP header (extension headers are left alone).
    if proto == 17 && l4 + 8 <= l3 + ip_len {
        let udp_len = usize::from(u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]));
        let room = l3 + ip_len - l4;
        if udp_len > room {
            frame[l4 + 4..l4 + 6].copy_from_slice(&(room as u16).to_be_bytes());
        }
    }
}

/// Classifies `paths` in order and writes the CSV (header first) to `out`.
pub fn classify_files(
    classifier: &Classifier,
    limits: Limits,
    paths: &[impl AsRef<Path>],
    out: &mut impl Write,
) -> anyhow::Result<Totals> {
    let mut out = BufWriter::new(out);
    writeln!(out, "{CSV_HEADER}")?;
    let mut run = OfflineClassifier::new(classifier, limits);
    for path in paths {
        run.classify_file(path.as_ref(), &mut out)?;
    }
    out.flush()?;
    Ok(run.totals())
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;
    use crate::dpi::dns;

    const CLIENT: [u8; 4] = [10, 0, 0, 7];
    const RESOLVER: [u8; 4] = [10, 0, 0, 1];
    const SERVER: [u8; 4] = [192, 0, 2, 80];

    fn udp(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(ports.0, ports.1);
        let mut frame = Vec::new();
        b.write(&mut frame, payload).unwrap();
        frame
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        tcp_between(CLIENT, SERVER, (40000, 80), payload)
    }

    fn tcp_between(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(ports.0, ports.1, 1, 65535);
        let mut frame = Vec::new();
        b.write(&mut frame, payload).unwrap();
        frame
    }

    /// A classic pcap (Ethernet) of `frames`, written to a file of its own.
    fn capture(name: &str, frames: &[Vec<u8>]) -> std::path::PathBuf {
        let mut file = Vec::new();
        for word in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
            file.extend_from_slice(&word.to_le_bytes());
        }
        for frame in frames {
            for word in [0u32, 0, frame.len() as u32, frame.len() as u32] {
                file.extend_from_slice(&word.to_le_bytes());
            }
            file.extend_from_slice(frame);
        }
        let dir =
            std::env::temp_dir().join(format!("patronus-offline-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, file).unwrap();
        path
    }

    #[test]
    fn a_data_connection_is_named_by_the_control_connection_that_announced_it() {
        let control = |from_server: bool, text: &str| {
            let (src, dst, ports) = if from_server {
                (SERVER, CLIENT, (21, 40000))
            } else {
                (CLIENT, SERVER, (40000, 21))
            };
            tcp_between(src, dst, ports, text.as_bytes())
        };
        let file = [0x5au8, 0x17, 0xc3, 0x00, 0x9e, 0x42, 0x01, 0xfd];
        let frames = [
            control(true, "220 ProFTPD Server ready\r\n"),
            control(false, "USER anonymous\r\n"),
            control(false, "PASV\r\n"),
            // Passive: the server listens on 195 * 256 + 80.
            control(true, "227 Entering Passive Mode (192,0,2,80,195,80).\r\n"),
            tcp_between(CLIENT, SERVER, (40001, 50000), &[]),
            tcp_between(SERVER, CLIENT, (50000, 40001), &file),
            // Used up: another connection to that port is not the announced one.
            tcp_between(CLIENT, SERVER, (40002, 50000), &file),
            // Active: the client listens, the server connects from port 20.
            control(false, "PORT 10,0,0,7,156,65\r\n"),
            tcp_between(SERVER, CLIENT, (20, 40001), &file),
        ];
        let path = capture("ftp.pcap", &frames);
        let classifier = Classifier::with_user_apps(&[]).unwrap();
        let mut offline = OfflineClassifier::new(&classifier, Limits::default());
        let mut out = Vec::new();
        offline.classify_file(&path, &mut out).unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let rows = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = rows.lines().collect();
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(
            rows[0].ends_with(",FileTransfer,FTP_CONTROL,signature"),
            "{rows:?}"
        );
        assert!(
            rows[1].contains(",40001,192.0.2.80,50000,FileTransfer,FTP_DATA,related"),
            "{rows:?}"
        );
        assert!(rows[2].ends_with(",Unknown,Unknown,none"), "{rows:?}");
        assert!(
            rows[3].contains(",20,10.0.0.7,40001,FileTransfer,FTP_DATA,related"),
            "{rows:?}"
        );
    }

    #[test]
    fn an_answer_in_a_capture_names_the_sessions_after_it_and_no_other_capture() {
        let name = "occ-0-2433-769.1.nflxvideo.net";
        let answer = dns::tests::response(name, &[(1, SERVER.to_vec())]);
        let request = format!(
            "GET /range/0-65535 HTTP/1.1\r\nHost: {}\r\n\r\n",
            "192.0.2.80"
        );
        let with_answer = capture(
            "resolved.pcap",
            &[
                udp(CLIENT, RESOLVER, (5353 + 1, 53), &dns::tests::query(name)),
                udp(RESOLVER, CLIENT, (53, 5353 + 1), &answer),
                tcp(request.as_bytes()),
            ],
        );
        let alone = capture("alone.pcap", &[tcp(request.as_bytes())]);
        let classifier = Classifier::with_user_apps(&[]).unwrap();
        let mut offline = OfflineClassifier::new(&classifier, Limits::default());
        let mut out = Vec::new();
        offline.classify_file(&with_answer, &mut out).unwrap();
        offline.classify_file(&alone, &mut out).unwrap();
        let _ = std::fs::remove_dir_all(with_answer.parent().unwrap());
        let rows = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = rows.lines().collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(
            rows[0].ends_with(",DNS,DNS.NetFlix,server_name"),
            "{rows:?}"
        );
        assert!(
            rows[1].ends_with(",Video,HTTP.NetFlix,dns_cache"),
            "{rows:?}"
        );
        assert!(
            rows[2].starts_with("alone.pcap,") && rows[2].ends_with(",Web,HTTP,dissector"),
            "the names of one capture are not another's: {rows:?}"
        );
    }
}
