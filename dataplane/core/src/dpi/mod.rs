//! Application classification (DPI): what each flow is, from its first packets.
//!
//! # Design
//!
//! * [`Classifier`] is immutable and shared by all workers: the compiled
//!   application catalogue ([`apps`]: the built-in data file plus user
//!   definitions), a Hyperscan block-mode database of payload signatures and
//!   a host-name index. A new set of definitions compiles into a new
//!   `Classifier` off the packet path and is swapped in whole.
//! * [`Inspector`] is per worker: the Hyperscan scratch, a decryption buffer
//!   for QUIC, a fixed pool of reassembly buffers, the addresses of the
//!   names it saw resolved ([`names`]) and the flows other flows announced
//!   (FTP's data connections, [`ftp`]; SIP's media, [`sdp`]), both bounded
//!   and aging. Nothing is
//!   allocated per packet.
//! * [`FlowInspection`] is the per-flow state (24 bytes plus an optional
//!   reassembly buffer borrowed from the pool while a TLS or QUIC hello is
//!   incomplete). Inspection stops at [`Limits`] (packets and bytes with
//!   payload); the flow's verdict is then final.
//!
//! # Why block mode, not stream mode
//!
//! Stream mode would keep Hyperscan stream state for every flow under
//! inspection, hundreds of bytes per flow for this database and more as users
//! add patterns, to match expressions that span packet boundaries. The
//! signatures here describe the start of a protocol message, which sits at
//! the start of a packet; the only messages that routinely span packets,
//! TLS and QUIC hellos, are reassembled by their own parsers. Block mode
//! therefore costs no per-flow Hyperscan memory at all: one scratch per worker.
//!
//! # Order of evidence
//!
//! Per packet with payload: payload signatures (the catalogue's order is
//! their priority), then the protocol dissectors (DNS, TLS, QUIC, HTTP,
//! STUN). A dissector that names a server (SNI, Host, query name) looks it up
//! in the host index: `TLS` to `www.youtube.com` becomes `TLS.YouTube`,
//! category Video. Protocols that only carry another application (TLS, QUIC,
//! HTTP, STUN) take the application's category unless it is `Unknown`;
//! name-resolution protocols stay DNS whatever name they resolve. A web
//! session that names no application itself takes the one of the name its
//! server's address was resolved for, when that answer crossed the gateway
//! ([`Inspector::learn_names`], [`Inspector::recall_name`]). A flow an FTP
//! control connection announced (a passive-mode reply, a PORT command) is
//! `FTP_DATA` from its first packet, a media stream a SIP session
//! description announced RTP or RTCP ([`Inspector::learn_announced`],
//! [`Inspector::announced`]).
//!
//! Every verdict says which of these reached it ([`Method`]).
//!
//! # Layout
//!
//! `types.rs` holds what a verdict says ([`Category`], [`Protocol`],
//! [`Classification`]) and [`Limits`]; `classifier.rs` the compiled
//! [`Classifier`]; `inspector.rs` the [`Inspector`] and [`FlowInspection`],
//! with the hello buffers of `reassembly.rs` and the RTP/RTCP/RakNet
//! recognition of `numbered.rs`; `payload.rs` what a frame gives the
//! inspector ([`Packet`], [`l4_payload`], [`tcp_seq`]). The dissectors of
//! single protocols are public modules of their own.

pub mod apps;
mod classifier;
pub mod counters;
pub mod dns;
pub mod ftp;
pub mod http;
mod inspector;
pub mod names;
mod numbered;
pub mod offline;
mod payload;
pub mod quic;
mod reassembly;
mod recent;
pub mod sdp;
pub mod stun;
pub mod tls;
mod types;

pub use classifier::{Account, Announcer, Classifier, ReadOn, Renumbering};
pub use inspector::{Announcement, Announcements, FlowInspection, Inspector};
pub use payload::{l4_payload, tcp_seq, Packet};
pub use reassembly::REASSEMBLY_BYTES;
pub use types::{AppPattern, Category, Classification, Limits, Method, Protocol};

/// The value of a run of one to five ASCII digits (the numbers of FTP's and
/// SDP's text lines).
fn decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

// The tests (`use super::*`) write packets and catalogue entries with these.
#[cfg(test)]
use crate::packet::flow_key::Direction;
#[cfg(test)]
use apps::{AppSpec, Transport};

#[cfg(test)]
mod tests;
