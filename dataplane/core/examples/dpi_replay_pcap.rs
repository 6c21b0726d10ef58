//! Writes the capture the DPI worker benchmark replays: every TCP/UDP frame
//! of the given captures, as Ethernet II addressed to `--dst-mac` with TTL
//! (hop limit) 64, in one pcap. Frames to or from multicast and broadcast
//! addresses are left out (the gateway would drop them before classifying),
//! and so are frames over 1514 bytes (captured with segmentation offload:
//! `net_pcap` replays each frame into one mbuf).
//!
//! `cargo run --release --example dpi_replay_pcap -- --dst-mac 02:70:63:61:70:00 --out replay.pcap --pcap tests/corpus/dpi/pcaps/*`

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use etherparse::Ipv4HeaderSlice;
use patronus_core::config::parse_mac;
use patronus_core::dpi::offline::{read_capture, to_ethernet};
use patronus_core::packet::parse::{parse, L3, L4};
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// DPI benchmark capture generator.
#[derive(Debug, Parser)]
struct Args {
    /// Destination MAC: the gateway port's.
    #[arg(long)]
    dst_mac: String,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Input captures (pcap or pcapng).
    #[arg(long, num_args = 1.., required = true)]
    pcap: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dst_mac = parse_mac(&args.dst_mac).context("--dst-mac is not a MAC address")?;
    let file =
        File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut writer = PcapWriter::new(BufWriter::new(file))?;
    let (mut buf, mut frame) = (Vec::new(), Vec::new());
    let (mut written, mut bytes) = (0u64, 0u64);
    let mut failed = None;
    for path in &args.pcap {
        read_capture(path, &mut buf, |link, data| {
            if failed.is_some() || !to_ethernet(link, data, &mut frame) {
                return;
            }
            let Ok(meta) = parse(&frame) else {
                return;
            };
            if !matches!(meta.l4, L4::Tcp { .. } | L4::Udp { .. }) {
                return;
            }
            let l3 = usize::from(meta.l3_offset);
            match meta.l3 {
                L3::Ipv4(ip) => {
                    let routable = |a: std::net::Ipv4Addr| !(a.is_multicast() || a.is_broadcast());
                    if !routable(ip.src) || !routable(ip.dst) {
                        return;
                    }
                    frame[l3 + 8] = 64;
                    let Ok(header) = Ipv4HeaderSlice::from_slice(&frame[l3..]) else {
                        return;
                    };
                    let checksum = header.to_header().calc_header_checksum();
                    frame[l3 + 10..l3 + 12].copy_from_slice(&checksum.to_be_bytes());
                }
                L3::Ipv6(ip) => {
                    if ip.src.is_multicast() || ip.dst.is_multicast() {
                        return;
                    }
                    frame[l3 + 7] = 64;
                }
                L3::Arp(_) => return,
            }
            frame[..6].copy_from_slice(&dst_mac);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
            frame.truncate(usize::from(meta.ip_end));
            if frame.len() > 1514 {
                return;
            }
            let packet =
                PcapPacket::new(Duration::from_micros(written), frame.len() as u32, &frame);
            match writer.write_packet(&packet) {
                Ok(_) => {
                    written += 1;
                    bytes += frame.len() as u64;
                }
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(e).context("writing the replay capture");
        }
    }
    println!("{written} frames {bytes} bytes");
    Ok(())
}
