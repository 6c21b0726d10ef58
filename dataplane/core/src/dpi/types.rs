//! What classification says about a flow ([`Category`], [`Protocol`],
//! [`Classification`]) and how much of a flow it looks at ([`Limits`]): the
//! vocabulary the classifier, the inspector, the counters and the policies
//! share.

use serde::Deserialize;

use crate::labels::labelled_enum;

labelled_enum! {
    /// Application category: what policy and QoS act on.
    #[derive(Deserialize)]
    Category {
        /// Web browsing and app APIs over HTTP, TLS and QUIC.
        Web => "Web";
        /// Video streaming.
        Video => "Video";
        /// Real-time voice and video calls.
        VoIP => "VoIP";
        /// Games.
        Gaming => "Gaming";
        /// File transfer and remote file access.
        FileTransfer => "FileTransfer";
        /// Database protocols.
        Database => "Database";
        /// Name resolution.
        DNS => "DNS";
        /// Remote shells and desktops.
        RemoteAccess => "RemoteAccess";
        /// Mail.
        Email => "Email";
        /// Anything else, and flows not (yet) identified.
        Unknown => "Unknown";
    }
}

labelled_enum! {
    /// Protocols recognised by a dissector in code (the rest are catalogue signatures).
    Protocol {
        /// TLS over TCP.
        Tls => "TLS";
        /// QUIC.
        Quic => "QUIC";
        /// HTTP/1.x.
        Http => "HTTP";
        /// DNS.
        Dns => "DNS";
        /// Multicast DNS.
        Mdns => "MDNS";
        /// Link-Local Multicast Name Resolution.
        Llmnr => "LLMNR";
        /// STUN/TURN.
        Stun => "STUN";
        /// RTP media (two packets of one stream in a row).
        Rtp => "RTP";
        /// RTCP media control.
        Rtcp => "RTCP";
        /// RakNet, the game-networking transport (its data datagrams).
        RakNet => "RakNet";
        /// An FTP data connection, announced by its control connection.
        FtpData => "FTP_DATA";
    }
}

labelled_enum! {
    /// How a verdict was reached: what the flow showed that decided it, from
    /// the surest (a signature of the application's own protocol) to none.
    /// Policies and users tell a match from a guess by it.
    #[derive(Default)]
    Method {
        /// A catalogue signature matched the payload: a pattern, or a STUN
        /// attribute only the application's agents send.
        Signature => "signature";
        /// A name the flow carries: TLS or QUIC server name, HTTP Host, the DNS question.
        ServerName => "server_name";
        /// A name in the server's certificate.
        Certificate => "certificate";
        /// The application protocol the TLS or QUIC client offered (ALPN).
        Alpn => "alpn";
        /// The server port alone (a TLS port, QUIC's 443 for a session seen without its handshake).
        Port => "port";
        /// A web session named nothing itself; its server's address was
        /// resolved, in a DNS answer that crossed the gateway, for a name of the application.
        DnsCache => "dns_cache";
        /// Another flow announced it: the data connection an FTP control
        /// connection opened with a passive-mode reply or a PORT command, a
        /// call's RTP or RTCP that a SIP session description named.
        Related => "related";
        /// A protocol dissector recognised the protocol; no application is named.
        Dissector => "dissector";
        /// Nothing: the flow is Unknown.
        #[default]
        None => "none";
    }
}

impl Protocol {
    /// The category of the protocol itself, before the application it carries is known.
    pub(super) fn category(self) -> Category {
        match self {
            Protocol::Tls | Protocol::Quic | Protocol::Http => Category::Web,
            Protocol::Dns | Protocol::Mdns | Protocol::Llmnr => Category::DNS,
            Protocol::Stun | Protocol::Rtp | Protocol::Rtcp => Category::VoIP,
            Protocol::RakNet => Category::Gaming,
            Protocol::FtpData => Category::FileTransfer,
        }
    }

    /// True when the protocol carries another application, whose category then wins.
    pub(super) fn is_carrier(self) -> bool {
        !matches!(
            self,
            Protocol::Dns | Protocol::Mdns | Protocol::Llmnr | Protocol::FtpData
        )
    }
}

/// A flow's identification: a dissected protocol, a catalogue application, or
/// both, and how it was reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Classification {
    /// The protocol found by a dissector.
    pub protocol: Option<Protocol>,
    /// Index of the catalogue application in the classifier that produced it.
    pub app: Option<u16>,
    /// What decided it.
    pub method: Method,
}

impl Classification {
    /// `protocol` found by its dissector, with the application `named` by
    /// what `method` says (if any).
    pub fn dissected(protocol: Protocol, named: Option<(u16, Method)>) -> Classification {
        Classification {
            protocol: Some(protocol),
            app: named.map(|(app, _)| app),
            method: named.map_or(Method::Dissector, |(_, method)| method),
        }
    }

    /// True when nothing was identified.
    pub fn is_unknown(&self) -> bool {
        self.protocol.is_none() && self.app.is_none()
    }

    /// Packs a final classification into a flow entry's `app` field (never 0,
    /// which means "not classified yet"): bit 31 set, the method in bits
    /// 24-30, the protocol (plus one) in 16-23, the application (plus one) below.
    #[inline]
    pub fn to_flow_app(&self) -> u32 {
        let p = self.protocol.map_or(0, |p| p.index() as u32 + 1);
        let a = self.app.map_or(0, |a| u32::from(a) + 1);
        1 << 31 | (self.method.index() as u32) << 24 | p << 16 | a
    }

    /// Unpacks [`Classification::to_flow_app`]; None for 0 (not classified yet).
    #[inline]
    pub fn from_flow_app(v: u32) -> Option<Classification> {
        if v == 0 {
            return None;
        }
        let m = ((v >> 24) & 0x7f) as usize;
        let p = ((v >> 16) & 0xff) as usize;
        let a = v & 0xffff;
        Some(Classification {
            protocol: p.checked_sub(1).and_then(|i| Protocol::ALL.get(i).copied()),
            app: a.checked_sub(1).map(|a| a as u16),
            method: Method::ALL.get(m).copied().unwrap_or_default(),
        })
    }
}

/// How much of each flow is inspected.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Packets with payload inspected per flow (both directions together).
    #[serde(default = "Limits::default_packets")]
    pub max_packets: u16,
    /// Payload bytes inspected per flow.
    #[serde(default = "Limits::default_bytes")]
    pub max_bytes: u32,
}

impl Limits {
    fn default_packets() -> u16 {
        Limits::default().max_packets
    }
    fn default_bytes() -> u32 {
        Limits::default().max_bytes
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packets: 12,
            max_bytes: 16 * 1024,
        }
    }
}

/// What a policy's `application` condition names, resolved against one
/// classifier: an application of the catalogue, a protocol, both as
/// `Protocol.Application`, or `Unknown` (a flow inspected and not identified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppPattern {
    /// Identified as nothing.
    Unknown,
    /// This protocol, or this application (a name can be both).
    Either {
        /// The protocol of that name, if one is.
        protocol: Option<Protocol>,
        /// The catalogue application of that name, if one is.
        app: Option<u16>,
    },
    /// This application carried by this protocol (`TLS.YouTube`).
    Both {
        /// The carrying protocol.
        protocol: Protocol,
        /// The catalogue application.
        app: u16,
    },
}

impl AppPattern {
    /// Whether a flow classified as `c` is what the pattern names.
    pub fn matches(&self, c: &Classification) -> bool {
        match *self {
            AppPattern::Unknown => c.is_unknown(),
            AppPattern::Either { protocol, app } => {
                (protocol.is_some() && c.protocol == protocol) || (app.is_some() && c.app == app)
            }
            AppPattern::Both { protocol, app } => {
                c.protocol == Some(protocol) && c.app == Some(app)
            }
        }
    }
}
