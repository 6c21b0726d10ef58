//! FTP control messages that announce a data connection: the server's
//! passive-mode replies, `227` (RFC 959 §4.1.2, with the text scanned for
//! the numbers as RFC 1123 §4.1.2.6 advises) and `229` (EPSV, RFC 2428 §3),
//! and the client's `PORT` (RFC 959 §4.1.2) and `EPRT` (RFC 2428 §2)
//! commands. Each names the end that will listen for the data connection:
//! its port, and its address unless the message leaves it to the control
//! connection's (EPSV).

use std::net::{IpAddr, Ipv4Addr};

use super::decimal;

/// How long an announced data connection is awaited: clients open it at
/// once, servers close an unused passive listener within a minute.
pub const ANNOUNCED_TTL_NS: u64 = 60 * 1_000_000_000;

/// One announced data connection: the listening end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The address given in the message (None: the sender's own, as EPSV says).
    pub addr: Option<IpAddr>,
    /// The listening port (never 0).
    pub port: u16,
}

/// Calls `found` for each data connection announced in `payload`, one
/// segment of a control connection in either direction. Lines that are not
/// such messages, or do not parse, are skipped.
pub fn announcements(payload: &[u8], mut found: impl FnMut(Announcement)) {
    for line in payload.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let announced = if let Some(text) = line.strip_prefix(b"227") {
            // The reply's text is free; its numbers follow the first digit.
            let start = text.iter().position(u8::is_ascii_digit);
            start.and_then(|s| host_port(&text[s..]))
        } else if let Some(text) = line.strip_prefix(b"229") {
            let open = text.iter().position(|&b| b == b'(');
            open.and_then(|o| extended(&text[o + 1..], true))
        } else if let Some(args) = command(line, b"PORT ") {
            host_port(args)
        } else if let Some(args) = command(line, b"EPRT ") {
            extended(args, false)
        } else {
            None
        };
        if let Some(a) = announced.filter(|a| a.port != 0) {
            found(a);
        }
    }
}

/// The arguments of `line` when it is the command `name` (commands are case-insensitive).
fn command<'l>(line: &'l [u8], name: &[u8]) -> Option<&'l [u8]> {
    let head = line.get(..name.len())?;
    head.eq_ignore_ascii_case(name)
        .then(|| line[name.len()..].trim_ascii_start())
}

/// `h1,h2,h3,h4,p1,p2`: six decimal bytes, the address and the port's two bytes.
fn host_port(text: &[u8]) -> Option<Announcement> {
    let mut bytes = [0u8; 6];
    let mut rest = text;
    for (i, byte) in bytes.iter_mut().enumerate() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 3 {
            return None;
        }
        *byte = u8::try_from(decimal(&rest[..digits])?).ok()?;
        rest = &rest[digits..];
        if i < 5 {
            rest = rest.strip_prefix(b",")?;
        }
    }
    let [a, b, c, d, hi, lo] = bytes;
    Some(Announcement {
        addr: Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
        port: u16::from_be_bytes([hi, lo]),
    })
}

/// `<d><proto><d><address><d><port><d>` (RFC 2428), `d` any printable
/// character but a digit. EPSV replies leave protocol and address empty
/// (`passive`); EPRT gives both (1: IPv4, 2: IPv6).
fn extended(text: &[u8], passive: bool) -> Option<Announcement> {
    let delimiter = *text.first()?;
    if !delimiter.is_ascii_graphic() || delimiter.is_ascii_digit() {
        return None;
    }
    let mut fields = text[1..].split(|&b| b == delimiter);
    let (proto, addr, port) = (fields.next()?, fields.next()?, fields.next()?);
    // The closing delimiter must be there: a fourth field exists.
    fields.next()?;
    let addr = if passive {
        if !proto.is_empty() || !addr.is_empty() {
            return None;
        }
        None
    } else {
        let addr: IpAddr = std::str::from_utf8(addr).ok()?.parse().ok()?;
        match (proto, addr) {
            (b"1", IpAddr::V4(_)) | (b"2", IpAddr::V6(_)) => Some(addr),
            _ => return None,
        }
    };
    Some(Announcement {
        addr,
        port: u16::try_from(decimal(port)?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(payload: &[u8]) -> Vec<Announcement> {
        let mut v = Vec::new();
        announcements(payload, |a| v.push(a));
        v
    }

    fn v4(a: [u8; 4], port: u16) -> Announcement {
        Announcement {
            addr: Some(IpAddr::from(a)),
            port,
        }
    }

    #[test]
    fn passive_replies_give_the_servers_listener() {
        // RFC 959's form, and the forms without parentheses RFC 1123 warns of.
        assert_eq!(
            all(b"227 Entering Passive Mode (192,168,1,2,19,137).\r\n"),
            [v4([192, 168, 1, 2], 19 * 256 + 137)]
        );
        assert_eq!(
            all(b"227 Entering Passive Mode 10,0,0,9,4,1\r\n"),
            [v4([10, 0, 0, 9], 1025)]
        );
        assert_eq!(all(b"227 =10,0,0,9,4,1\r\n"), [v4([10, 0, 0, 9], 1025)]);
        // RFC 2428 §3's example.
        assert_eq!(
            all(b"229 Entering Extended Passive Mode (|||6446|)\r\n"),
            [Announcement {
                addr: None,
                port: 6446
            }]
        );
    }

    #[test]
    fn port_commands_give_the_clients_listener() {
        assert_eq!(
            all(b"PORT 132,235,1,2,24,131\r\n"),
            [v4([132, 235, 1, 2], 24 * 256 + 131)]
        );
        assert_eq!(all(b"port 10,1,2,3,0,21\r\n"), [v4([10, 1, 2, 3], 21)]);
        // RFC 2428 §2's examples.
        assert_eq!(
            all(b"EPRT |1|132.235.1.2|6275|\r\n"),
            [v4([132, 235, 1, 2], 6275)]
        );
        assert_eq!(
            all(b"EPRT |2|1080::8:800:200C:417A|5282|\r\n"),
            [Announcement {
                addr: Some("1080::8:800:200c:417a".parse().unwrap()),
                port: 5282
            }]
        );
    }

    #[test]
    fn several_lines_of_one_segment_are_all_read() {
        let segment = b"200 Type set to I\r\n227 Entering Passive Mode (10,0,0,1,200,10)\r\n";
        assert_eq!(all(segment), [v4([10, 0, 0, 1], 200 * 256 + 10)]);
    }

    #[test]
    fn what_does_not_parse_announces_nothing() {
        for bad in [
            &b"227 Entering Passive Mode (256,0,0,1,1,1)\r\n"[..],
            b"227 Entering Passive Mode (10,0,0,1,1)\r\n",
            b"227 Entering Passive Mode (10,0,0,1,0,0)\r\n",
            b"227 Entering Passive Mode\r\n",
            b"229 Entering Extended Passive Mode (|||0|)\r\n",
            b"229 Entering Extended Passive Mode (|||65536|)\r\n",
            b"229 Entering Extended Passive Mode (|||6446)\r\n",
            b"229 Entering Extended Passive Mode (1116446|)\r\n",
            b"229 Entering Extended Passive Mode (|1|10.0.0.1|6446|)\r\n",
            b"EPRT |2|132.235.1.2|6275|\r\n",
            b"EPRT |1|132.235.1|6275|\r\n",
            b"EPRT |\xff\xfe|\r\n",
            b"PORTABLE 10,1,2,3,0,21\r\n",
            b"RETR file.txt\r\n",
            b"200 PORT command successful\r\n",
            b"",
            b"227",
            b"229 (",
            b"EPRT ",
        ] {
            assert_eq!(all(bad), [], "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
