//! Writes the capture the forwarding benchmark replays: `--flows` UDP flows
//! (distinct source address and port each) toward 198.18.1.0/24, every frame
//! `--size` bytes without FCS, addressed to `--dst-mac`. Each flow's IP
//! identification is its index: DPDK's `qos_sched` example reads it as the
//! pipe, so that the flows spread over its pipes.
//!
//! `cargo run --release --example bench_pcap -- --flows 4096 --size 60 --dst-mac 02:70:63:61:70:00 --out in.pcap`

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
use patronus_core::config::parse_mac;
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// Benchmark capture generator.
#[derive(Debug, Parser)]
struct Args {
    /// Distinct flows (one frame each).
    #[arg(long, default_value_t = 4096)]
    flows: u32,
    /// Frame size in bytes without FCS (60 is a 64-byte frame on the wire).
    #[arg(long, default_value_t = 60)]
    size: usize,
    /// Destination MAC: the gateway port's.
    #[arg(long)]
    dst_mac: String,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

const HEADERS: usize = 14 + 20 + 8;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.size < 60 || args.size > 1514 {
        bail!("--size must be 60..=1514 (Ethernet without FCS)");
    }
    if args.flows == 0 || args.flows > 1 << 20 {
        bail!("--flows must be 1..=1048576");
    }
    let dst_mac = parse_mac(&args.dst_mac).context("--dst-mac is not a MAC address")?;
    let file =
        File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut writer = PcapWriter::new(BufWriter::new(file))?;
    let payload = vec![0x5a; args.size - HEADERS];
    let mut frame = Vec::with_capacity(args.size);
    for i in 0..args.flows {
        let src = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let dst = [198, 18, 1, 1 + (i % 254) as u8];
        let sport = 1024 + ((i.wrapping_mul(7919)) % 60_000) as u16;
        frame.clear();
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, src, dst)?;
        ip.identification = i as u16;
        PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x01], dst_mac)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(sport, 5000)
            .write(&mut frame, &payload)?;
        let packet = PcapPacket::new(
            Duration::from_micros(u64::from(i)),
            frame.len() as u32,
            &frame,
        );
        writer.write_packet(&packet)?;
    }
    Ok(())
}
