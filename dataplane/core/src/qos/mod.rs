//! Hierarchical QoS: a shaper per egress that decides, packet by packet,
//! what leaves and when, so that a backup run never makes a call stutter on
//! a 50 Mbit/s branch uplink.
//!
//! The hierarchy is that of DESIGN.md: egress (uplink) ► tunnel ► class ►
//! flow queue, one [`Scheduler`] per shaped egress.
//!
//! - **Egress and tunnel**: token buckets ([`TokenBucket`]) with a rate and
//!   a burst, charged with what a packet costs on the wire: the caller's
//!   `wire_bytes` (for a tunnelled packet, [`wireguard_wire_bytes`] of the
//!   inner packet) plus the egress's configured framing overhead, as CAKE's
//!   `overhead`. Tunnels with backlog share the egress by deficit round
//!   robin; a tunnel over its own rate waits out of the rotation until it
//!   conforms again.
//! - **Classes** ([`Class`]), inside each tunnel: RealTime is served at
//!   strict priority up to its share of the tunnel's rate (its cap), and
//!   beyond it only when no other class wants to send, so it can neither
//!   starve the rest nor waste idle capacity. Each other class is served
//!   first up to its guaranteed minimum, then by weighted deficit round
//!   robin, up to its optional limit; unused shares go to the classes with
//!   demand. Class rates are percentages of the tunnel's rate, or of the
//!   egress's when the tunnel has none.
//! - **Flows**, inside each class: fair queuing between flow queues (deficit
//!   round robin with new flows first, as fq_codel; flows find their queue
//!   by a set-associative hash, as CAKE, so that few flows rarely share one),
//!   each queue kept short by [`codel`].
//!
//! Memory is bounded and allocated up front: a pool of packet slots per
//! egress, a packet limit per class of each tunnel, and a fixed number of
//! flow queues per class. A packet refused at enqueue is handed back with
//! its reason; one CoDel drops at dequeue is released as dropped; both are
//! counted per class and reason. Time is injected in nanoseconds.

mod bucket;
pub mod codel;
mod scheduler;
#[cfg(test)]
mod tests;

pub use bucket::TokenBucket;
pub use scheduler::{ClassCounters, Rejected, Released, Scheduler};

use crate::dpi::Category;
use crate::labels::labelled_enum;
use codel::CodelParams;

labelled_enum! {
    /// A traffic class, highest priority first.
    Class {
        /// Voice, games and name lookups: strict priority, capped.
        RealTime => "RealTime";
        /// Remote desktops and shells, and conferencing named by policy.
        Interactive => "Interactive";
        /// Video streaming.
        Streaming => "Streaming";
        /// Web, databases, mail and the unidentified.
        Standard => "Standard";
        /// File transfer: served last.
        Bulk => "Bulk";
    }
}

impl Class {
    /// The class of a DPI category when no policy rule names one (the table
    /// in DESIGN.md).
    pub fn for_category(category: Category) -> Class {
        match category {
            Category::VoIP | Category::Gaming | Category::DNS => Class::RealTime,
            Category::RemoteAccess => Class::Interactive,
            Category::Video => Class::Streaming,
            Category::Web | Category::Database | Category::Email | Category::Unknown => {
                Class::Standard
            }
            Category::FileTransfer => Class::Bulk,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Class {
    /// A class by its name, as configurations spell it (`RealTime`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Class::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{name:?} is not a QoS class (RealTime, Interactive, Streaming, Standard, Bulk)"
                ))
            })
    }
}

labelled_enum! {
    /// Why the shaper dropped a packet.
    DropReason {
        /// Its class of its tunnel already held its packet limit.
        QueueFull => "queue_full";
        /// The egress's packet pool was exhausted.
        PoolFull => "pool_full";
        /// CoDel dropped it at the head of a standing queue.
        Codel => "codel";
    }
}

/// RealTime's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealTimeClass {
    /// The share of the tunnel's rate it gets at strict priority (%).
    pub limit_percent: u8,
    /// Most packets it holds per tunnel.
    pub queue_packets: u32,
}

/// A weighted class's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightedClass {
    /// Its share of what is left after RealTime and the minimums, relative
    /// to the other classes' weights (1-1000).
    pub weight: u16,
    /// The share of the tunnel's rate it is served first (%).
    pub min_percent: u8,
    /// The share it may never exceed (%; 100: none).
    pub limit_percent: u8,
    /// Most packets it holds per tunnel.
    pub queue_packets: u32,
}

/// An egress shaper's settings (all of them may change while it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShaperConfig {
    /// The egress rate (bit/s).
    pub rate_bps: u64,
    /// The burst the egress may send at line rate (bytes; 0: the larger of
    /// 1 ms at `rate_bps` and two full-size frames).
    pub burst_bytes: u32,
    /// Bytes of framing each packet costs beyond what the caller counts
    /// (Ethernet header, FCS, preamble, gap: 38 on Ethernet).
    pub overhead_bytes: u16,
    /// RealTime.
    pub realtime: RealTimeClass,
    /// Interactive, Streaming, Standard and Bulk, in that order.
    pub weighted: [WeightedClass; 4],
    /// The AQM of every flow queue.
    pub codel: CodelParams,
}

impl ShaperConfig {
    /// The defaults at `rate_bps`: RealTime at up to 30% at strict
    /// priority, the others weighted 40/30/20/10 with no minimums or limits,
    /// CoDel at 5 ms/100 ms, Ethernet framing.
    pub fn new(rate_bps: u64) -> Self {
        let weighted = |weight| WeightedClass {
            weight,
            min_percent: 0,
            limit_percent: 100,
            queue_packets: 1_024,
        };
        ShaperConfig {
            rate_bps,
            burst_bytes: 0,
            overhead_bytes: 38,
            realtime: RealTimeClass {
                limit_percent: 30,
                queue_packets: 256,
            },
            weighted: [weighted(40), weighted(30), weighted(20), weighted(10)],
            codel: CodelParams::default(),
        }
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_bps < 8_000 {
            return Err(format!(
                "rate: {} bit/s is below the least of 8 kbit/s",
                self.rate_bps
            ));
        }
        if self.realtime.limit_percent > 100 {
            return Err(format!(
                "classes.RealTime.limit_percent: {}% is over 100%",
                self.realtime.limit_percent
            ));
        }
        if self.realtime.queue_packets == 0 {
            return Err("classes.RealTime.queue_packets: must hold at least one packet".into());
        }
        let mut minimums = u32::from(self.realtime.limit_percent);
        for (class, weighted) in Class::ALL[1..].iter().zip(&self.weighted) {
            if !(1..=1000).contains(&weighted.weight) {
                return Err(format!(
                    "classes.{class}.weight: {} is outside 1-1000",
                    weighted.weight
                ));
            }
            if weighted.limit_percent == 0 || weighted.limit_percent > 100 {
                return Err(format!(
                    "classes.{class}.limit_percent: {}% is outside 1-100%",
                    weighted.limit_percent
                ));
            }
            if weighted.min_percent > weighted.limit_percent {
                return Err(format!(
                    "classes.{class}.min_percent: {}% is above its limit of {}%",
                    weighted.min_percent, weighted.limit_percent
                ));
            }
            if weighted.queue_packets == 0 {
                return Err(format!(
                    "classes.{class}.queue_packets: must hold at least one packet"
                ));
            }
            minimums += u32::from(weighted.min_percent);
        }
        if minimums > 100 {
            return Err(format!(
                "classes: RealTime's limit and the minimums add up to {minimums}%, over 100%"
            ));
        }
        let codel = &self.codel;
        if codel.target_ns == 0 || codel.target_ns >= codel.interval_ns {
            return Err("codel.target: must be above zero and below the interval".into());
        }
        Ok(())
    }

    /// The burst in force (bytes): the configured one, or the default.
    pub fn effective_burst_bytes(&self) -> u32 {
        if self.burst_bytes != 0 {
            return self.burst_bytes;
        }
        default_burst(self.rate_bps, 1_000_000)
    }
}

/// How a scheduler is laid out; fixed for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Tunnels it shapes (traffic that leaves unencrypted takes a tunnel
    /// slot of its own).
    pub tunnels: usize,
    /// Flow queues per class of each tunnel (a power of two, 8-1024).
    pub flow_queues: usize,
    /// Most packets it holds in all.
    pub packets: usize,
}

impl Layout {
    /// Checks the layout; the error names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.tunnels == 0 || self.tunnels > 1 << 20 {
            return Err(format!("tunnels: {} is outside 1-1048576", self.tunnels));
        }
        if !self.flow_queues.is_power_of_two() || !(8..=1024).contains(&self.flow_queues) {
            return Err(format!(
                "flow_queues: {} is not a power of two in 8-1024",
                self.flow_queues
            ));
        }
        if self.packets == 0 || self.packets > 1 << 24 {
            return Err(format!("packets: {} is outside 1-16777216", self.packets));
        }
        Ok(())
    }
}

/// A tunnel's own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelRate {
    /// Its rate (bit/s, at least 8 kbit/s).
    pub rate_bps: u64,
    /// Its burst (bytes; 0: the larger of 5 ms at `rate_bps` and two
    /// full-size frames).
    pub burst_bytes: u32,
}

/// The bytes a WireGuard data message carrying `inner_bytes` of IP packet
/// puts on the wire above Ethernet: outer IP and UDP headers, the 16 B
/// message header, the payload padded to 16 B and the 16 B tag.
pub fn wireguard_wire_bytes(inner_bytes: u32, outer_ipv6: bool) -> u32 {
    let outer_ip = if outer_ipv6 { 40 } else { 20 };
    outer_ip + 8 + 16 + inner_bytes.div_ceil(16) * 16 + 16
}

/// Two full-size Ethernet frames: the least burst that lets a bucket send a
/// frame while the next is being charged.
const MIN_BURST_BYTES: u32 = 2 * 1_514;

/// `window_ns` at `rate_bps` in bytes, at least [`MIN_BURST_BYTES`].
fn default_burst(rate_bps: u64, window_ns: u64) -> u32 {
    let bytes = u128::from(rate_bps) * u128::from(window_ns) / 8_000_000_000;
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .max(MIN_BURST_BYTES)
}
