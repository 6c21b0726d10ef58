//! The site's policies as the packet path applies them: compiled rules,
//! highest priority first, and what a flow is matched on.

use std::net::IpAddr;

use ipnet::IpNet;

use super::site::{PathSelection, RuleAction};
use crate::dpi::{AppPattern, Category, Classification};
use crate::packet::flow_key::ip_proto;
use crate::qos::Class;

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// An application (`YouTube`, `TLS`, `TLS.YouTube`, `Unknown`), as
    /// written and as the classifier in force numbers it.
    Application(String, AppPattern),
    /// Category.
    Category(Category),
    /// Source prefix.
    SourcePrefix(IpNet),
    /// Destination prefix.
    DestinationPrefix(IpNet),
    /// Destination port (TCP or UDP).
    DestinationPort(u16),
    /// DSCP.
    Dscp(u8),
    /// IP protocol number.
    Protocol(u8),
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The policy it belongs to.
    pub policy: String,
    /// Its position in the policy's rules, as written.
    pub index: u32,
    /// Where its drops are counted ([`crate::stats::rule_slot`]).
    pub slot: u32,
    /// Its priority.
    pub priority: u32,
    /// Its action.
    pub action: RuleAction,
    /// All must match.
    pub conditions: Vec<Match>,
    /// For `route` rules.
    pub path_selection: Option<PathSelection>,
    /// For `route` rules: each packet over the two best paths.
    pub duplicate: bool,
    /// The class it gives its flows, in place of their category's.
    pub qos_class: Option<Class>,
}

/// What a flow is matched on: its addresses and ports as its first packet
/// had them (the side that started it is the source), the DSCP of the
/// packet that (re)evaluates it, and its classification once DPI has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowFacts {
    /// The address that started the flow.
    pub src: IpAddr,
    /// The address it started it toward.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// The destination port (TCP and UDP; 0 otherwise).
    pub dst_port: u16,
    /// The DSCP of the packet being looked at.
    pub dscp: u8,
    /// What DPI made of the flow; `None` while it still inspects.
    pub classification: Option<Classification>,
    /// The category of that classification.
    pub category: Option<Category>,
}

impl Match {
    /// Whether a flow with these facts meets the condition. Application and
    /// category conditions are not met while the flow is still being
    /// classified.
    pub fn matches(&self, f: &FlowFacts) -> bool {
        match self {
            Match::Application(_, pattern) => f.classification.is_some_and(|c| pattern.matches(&c)),
            Match::Category(c) => f.category == Some(*c),
            Match::SourcePrefix(net) => net.contains(&f.src),
            Match::DestinationPrefix(net) => net.contains(&f.dst),
            Match::DestinationPort(port) => {
                matches!(f.protocol, ip_proto::TCP | ip_proto::UDP) && f.dst_port == *port
            }
            Match::Dscp(d) => f.dscp == *d,
            Match::Protocol(p) => f.protocol == *p,
        }
    }
}

impl Rule {
    /// Whether every condition is met.
    pub fn matches(&self, f: &FlowFacts) -> bool {
        self.conditions.iter().all(|m| m.matches(f))
    }
}

/// The first rule (rules are kept highest priority first) a flow meets.
pub fn first_match(rules: &[Rule], f: &FlowFacts) -> Option<usize> {
    rules.iter().position(|r| r.matches(f))
}
