//! The media streams a SIP message's session description announces (SDP,
//! RFC 8866): each `m=` line of an RTP profile (RFC 3550's RTP/AVP, its
//! secure and feedback variants, RFC 5764's UDP/TLS/RTP/SAVP) names the port
//! its RTP will arrive on, at the `c=` address of the stream or of the
//! session; RTCP goes to the next port (RFC 3550 §11), to the one an
//! `a=rtcp:` attribute names (RFC 3605), or shares RTP's (`a=rtcp-mux`,
//! RFC 5761).

use std::net::IpAddr;

use super::Protocol;

/// How long an announced stream is awaited: a call may ring for up to
/// three minutes before its media starts (RFC 3261's INVITE timer C).
pub const ANNOUNCED_TTL_NS: u64 = 180 * 1_000_000_000;

/// Media sections read per message at most.
const MAX_STREAMS: usize = 8;

/// One announced media flow: where it will arrive, and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The receiving address (never unspecified).
    pub addr: IpAddr,
    /// The receiving port (never 0).
    pub port: u16,
    /// RTP or RTCP.
    pub protocol: Protocol,
}

/// A `c=` line's reading: an address, or one that says the stream is on
/// hold (0.0.0.0) or cannot be read.
type Connection = Option<IpAddr>;

/// Calls `found` for each RTP and RTCP stream the session description in
/// the body of `message` (a SIP request or response) announces. A message
/// without a description, lines that do not parse, and streams without a
/// usable address (on hold, or none given) announce nothing.
pub fn streams(message: &[u8], mut found: impl FnMut(Stream)) {
    let Some(body) = body(message) else { return };
    if !body.starts_with(b"v=0") {
        return;
    }
    let mut session: Connection = None;
    // The section under way: Some(None) for a media section this reader
    // skips (not RTP, or turned off), whose lines still belong to it.
    let mut current: Option<Option<Section>> = None;
    let mut sections = 0;
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match (line.split_first_chunk::<2>(), current.as_mut()) {
            (Some((b"c=", rest)), None) => session = connection(rest),
            (Some((b"c=", rest)), Some(Some(section))) => section.addr = Some(connection(rest)),
            (Some((b"m=", rest)), _) => {
                if let Some(Some(section)) = current.take() {
                    section.announce(session, &mut found);
                }
                sections += 1;
                if sections > MAX_STREAMS {
                    return;
                }
                current = Some(media(rest));
            }
            (Some((b"a=", rest)), Some(Some(section))) => {
                if rest == b"rtcp-mux" {
                    section.rtcp_mux = true;
                } else if let Some(value) = rest.strip_prefix(b"rtcp:") {
                    section.rtcp = rtcp_attribute(value);
                }
            }
            _ => {}
        }
    }
    if let Some(Some(section)) = current {
        section.announce(session, &mut found);
    }
}

/// One `m=` section of an RTP profile.
#[derive(Clone, Copy, Debug)]
struct Section {
    port: u16,
    /// Its own `c=` line's reading, if it has one.
    addr: Option<Connection>,
    /// `a=rtcp:`'s port, and its address if it gives one.
    rtcp: Option<(u16, Option<Connection>)>,
    rtcp_mux: bool,
}

impl Section {
    fn announce(self, session: Connection, found: &mut impl FnMut(Stream)) {
        let addr = self.addr.unwrap_or(session);
        if let Some(addr) = addr {
            found(Stream {
                addr,
                port: self.port,
                protocol: Protocol::Rtp,
            });
        }
        if self.rtcp_mux {
            return;
        }
        let (port, rtcp_addr) = match self.rtcp {
            Some((port, given)) => (Some(port), given.unwrap_or(addr)),
            None => (self.port.checked_add(1), addr),
        };
        if let (Some(port), Some(addr)) = (port, rtcp_addr) {
            found(Stream {
                addr,
                port,
                protocol: Protocol::Rtcp,
            });
        }
    }
}

/// `a=rtcp:<port>[ IN IP4|IP6 <address>]` (RFC 3605).
fn rtcp_attribute(value: &[u8]) -> Option<(u16, Option<Connection>)> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let port = decimal_port(&value[..digits])?;
    let rest = value[digits..].strip_prefix(b" ");
    Some((port, rest.map(connection)))
}

/// The message body: what follows the blank line that ends the headers.
fn body(message: &[u8]) -> Option<&[u8]> {
    let crlf = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    let lf = || {
        message
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|at| at + 2)
    };
    message.get(crlf.or_else(lf)?..)
}

/// `c=IN IP4 <address>[/ttl...]` or `IN IP6 <address>`: the address, unless unspecified.
fn connection(rest: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut fields = text.split(' ');
    let (net, kind, addr) = (fields.next()?, fields.next()?, fields.next()?);
    let addr: IpAddr = addr.split('/').next()?.parse().ok()?;
    let kind_ok = matches!(
        (kind, addr),
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_))
    );
    (net == "IN" && kind_ok && !addr.is_unspecified()).then_some(addr)
}

/// `m=<media> <port>[/<count>] <proto> <formats>`: a section when the
/// transport is an RTP profile and the port is not 0 (a stream turned off).
fn media(rest: &[u8]) -> Option<Section> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut fields = text.split(' ');
    let (_media, port, proto) = (fields.next()?, fields.next()?, fields.next()?);
    if !proto.split('/').any(|p| p == "RTP") {
        return None;
    }
    let port = decimal_port(port.split('/').next()?.as_bytes())?;
    Some(Section {
        port,
        addr: None,
        rtcp: None,
        rtcp_mux: false,
    })
}

/// A port of one to five digits, never 0.
fn decimal_port(digits: &[u8]) -> Option<u16> {
    u16::try_from(super::decimal(digits)?)
        .ok()
        .filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(message: &[u8]) -> Vec<Stream> {
        let mut v = Vec::new();
        streams(message, |s| v.push(s));
        v
    }

    fn stream(addr: &str, port: u16, protocol: Protocol) -> Stream {
        Stream {
            addr: addr.parse().unwrap(),
            port,
            protocol,
        }
    }

    /// An INVITE with the session description of RFC 3261 §4's example, a
    /// floor-control section with an address of its own (it is no RTP
    /// stream: its address is not the session's), and a video stream whose
    /// RTCP has a port and address of its own (RFC 3605).
    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 200\r\n\
        \r\n\
        v=0\r\n\
        o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.101\r\n\
        t=0 0\r\n\
        m=audio 49172 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        m=application 5070 UDP/BFCP *\r\n\
        c=IN IP4 198.51.100.9\r\n\
        m=video 51372 RTP/SAVPF 99\r\n\
        a=rtcp:53020 IN IP4 192.0.2.102\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

    #[test]
    fn each_rtp_stream_and_its_rtcp_is_announced() {
        assert_eq!(
            all(INVITE),
            [
                stream("192.0.2.101", 49172, Protocol::Rtp),
                stream("192.0.2.101", 49173, Protocol::Rtcp),
                stream("192.0.2.101", 51372, Protocol::Rtp),
                stream("192.0.2.102", 53020, Protocol::Rtcp),
            ]
        );
    }

    #[test]
    fn rtcp_mux_a_stream_turned_off_and_no_address() {
        let answer = b"SIP/2.0 200 OK\r\n\r\nv=0\r\nc=IN IP6 2001:db8::7\r\nm=audio 5004 UDP/TLS/RTP/SAVP 111\r\na=rtcp-mux\r\nm=video 0 RTP/AVP 96\r\n";
        assert_eq!(all(answer), [stream("2001:db8::7", 5004, Protocol::Rtp)]);
        // On hold (RFC 3264 §8.4's old form) or without any address: nothing.
        let held = b"SIP/2.0 200 OK\r\n\r\nv=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 6000 RTP/AVP 0\r\n";
        assert_eq!(all(held), []);
        let nowhere = b"SIP/2.0 200 OK\r\n\r\nv=0\r\nm=audio 6000 RTP/AVP 0\r\n";
        assert_eq!(all(nowhere), []);
    }

    #[test]
    fn what_is_no_description_announces_nothing() {
        for bad in [
            &b"REGISTER sip:registrar.example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n"[..],
            b"SIP/2.0 200 OK\r\n\r\nnot sdp\r\nm=audio 5004 RTP/AVP 0\r\n",
            b"SIP/2.0 200 OK\r\n\r\nv=0\r\nm=audio 70000 RTP/AVP 0\r\n",
            b"SIP/2.0 200 OK\r\n\r\nv=0\r\nm=audio 5004 TCP/MSRP *\r\n",
            b"SIP/2.0 200 OK\r\n\r\nv=0\r\nm=audio\r\n",
            b"SIP/2.0 200 OK\r\nv=0\r\nm=audio 5004 RTP/AVP 0\r\n",
            b"",
        ] {
            assert_eq!(all(bad), [], "{:?}", String::from_utf8_lossy(bad));
        }
        // A description is read for at most eight streams.
        let mut many = b"SIP/2.0 200 OK\r\n\r\nv=0\r\nc=IN IP4 192.0.2.1\r\n".to_vec();
        for i in 0..20 {
            many.extend_from_slice(
                format!("m=audio {} RTP/AVP 0\r\na=rtcp-mux\r\n", 5000 + 2 * i).as_bytes(),
            );
        }
        assert_eq!(all(&many).len(), 8);
    }
}
