//! SD-WAN paths: the ways to a peer (a local uplink and a remote endpoint),
//! how each is measured, and which one a flow takes.

pub mod sla;
