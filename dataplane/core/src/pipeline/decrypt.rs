//! Stage `decrypt`: datagrams for the tunnel's listen port go through the
//! tunnel engine. A data message opens into an inner packet that continues
//! in the same pass: it is given an Ethernet header, parsed and admitted
//! as a packet arriving on the tunnel port, then goes on to `local` or
//! `flow` like any other. A handshake answer built in the datagram's buffer
//! goes on to `encrypt` for its outer headers; a message for a session of
//! another worker goes to that worker.

use super::encrypt::{hand_off, Tunnel};
use super::icmp::Errors;
use super::paths::NO_UPLINK;
use super::{admit, Burst, Context, Inboxes, Next, Shaping};
use crate::config::TUNNEL_MAC;
use crate::frame::Frame;
use crate::packet::parse;
use crate::paths::probe::{echo_in_place, Kind, ProbeMessage};
use crate::stats::{Counter, Counters, DropReason};
use crate::tunnel::outer::add_ethernet;
use crate::tunnel::{Outcome, TunnelConfig, TunnelEnv};

#[allow(clippy::too_many_arguments)]
// Out of line, so that profiles attribute the pass to its stage.
#[inline(never)]
pub(super) fn run<F: Frame>(
    tunnel: &mut Tunnel<F>,
    inboxes: &Inboxes<F>,
    errors: &mut Errors,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
    env: &mut impl TunnelEnv<F>,
) {
    let (mut packets, mut bytes) = (0, 0);
    for i in burst.slots() {
        let Next::Decrypt { payload } = burst.meta[i].next else {
            continue;
        };
        let (Some(mut frame), Some(t)) = (burst.take(i), ctx.cfg.tunnel.as_deref()) else {
            counters.drop(DropReason::LocalUnsupported);
            continue;
        };
        if !frame.trim_front(usize::from(payload)) {
            counters.drop(DropReason::LocalUnsupported);
            continue;
        }
        let from = burst.addr[i];
        match tunnel
            .engine
            .receive(&t.config, from, frame, ctx.now_ns, env)
        {
            Outcome::Deliver { peer, mut frame } => {
                tunnel
                    .paths
                    .count_rx(peer, burst.uplink[i], from, frame.len());
                // BFD of one of the peer's paths ends here.
                if tunnel
                    .paths
                    .handle_bfd(peer, burst.uplink[i], from, frame.data(), ctx.now_ns)
                {
                    continue;
                }
                if !add_ethernet(&mut frame, TUNNEL_MAC) {
                    counters.drop(DropReason::NoBuffer);
                    continue;
                }
                packets += 1;
                bytes += frame.len() as u64;
                parse::parse_into(frame.data(), &mut burst.headers[i]);
                if let Err(err) = burst.headers[i] {
                    counters.parse_drop(err);
                    continue;
                }
                burst.put(i, frame, Next::Admit);
                burst.meta[i].in_port = t.port;
                admit::run(counters, errors, ctx, burst, i..i + 1);
            }
            // A handshake answer goes back the way the message came.
            Outcome::Transmit { to, frame } => {
                burst.addr[i] = to;
                burst.shaping[i] = Shaping::CONTROL;
                burst.put(i, frame, Next::Datagram);
            }
            Outcome::Extension { peer, frame } => {
                extension(tunnel, &t.config, counters, ctx, burst, i, peer, frame, env);
            }
            Outcome::HandOff { worker, work } => hand_off(
                inboxes,
                counters,
                worker,
                work,
                (0, Shaping::NONE),
                burst.uplink[i],
            ),
            Outcome::Done => {}
        }
        tunnel.measure_handshakes(Some((burst.uplink[i], from)), ctx.now_ns);
    }
    counters.add(Counter::RxPackets, packets);
    counters.add(Counter::RxBytes, bytes);
}

/// A path probe is echoed back over the path it came by (the uplink it
/// arrived on, to its source); an echo of ours goes to the path's meter.
#[allow(clippy::too_many_arguments)]
fn extension<F: Frame>(
    tunnel: &mut Tunnel<F>,
    cfg: &TunnelConfig,
    counters: &mut Counters,
    ctx: &Context<'_>,
    burst: &mut Burst<F>,
    i: usize,
    peer: u32,
    mut frame: F,
    env: &mut impl TunnelEnv<F>,
) {
    match ProbeMessage::parse(frame.data()) {
        Ok(m) if m.kind == Kind::Echo => tunnel.paths.handle_echo(peer, &m, ctx.now_ns),
        Ok(_) => {
            echo_in_place(frame.data_mut());
            // Handed over by another worker, it lost where it arrived: the
            // echo takes the peer's current path.
            if burst.uplink[i] == NO_UPLINK {
                if let Some((_, uplink, _)) = tunnel.paths.route(peer, 0, ctx.now_ns) {
                    burst.uplink[i] = uplink;
                }
            }
            if let Some((_, frame)) = tunnel
                .engine
                .send_extension(cfg, peer, frame, ctx.now_ns, env)
            {
                // burst.addr[i] (the probe's source) and burst.uplink[i]
                // (where it arrived) stay: the echo retraces the path.
                burst.put(i, frame, Next::Datagram);
            }
        }
        Err(_) => counters.drop(DropReason::ExtensionUnknown),
    }
}
