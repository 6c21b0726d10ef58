//! DNS messages (RFC 1035): validates the header and reads the first question's name.
//!
//! Used for DNS, mDNS and LLMNR, which share the format. Name decoding
//! follows compression pointers at most `MAX_POINTERS` times and never
//! writes past the caller's buffer.

/// Compression pointers followed per name before the message counts as malformed.
const MAX_POINTERS: usize = 16;

/// Longest decoded name (RFC 1035: 255 octets on the wire).
pub const MAX_NAME: usize = 255;

/// A DNS message's first question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question<'n> {
    /// Query name in dotted text form, without the trailing dot; empty for the root.
    pub name: &'n str,
    /// True for a response (QR bit).
    pub response: bool,
}

/// Reads a DNS message over UDP; `name_buf` receives the decoded name.
pub fn question<'n>(msg: &[u8], name_buf: &'n mut [u8; MAX_NAME]) -> Option<Question<'n>> {
    let header = msg.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let opcode = (flags >> 11) & 0xf;
    let rcode = flags & 0xf;
    let counts = [4, 6, 8, 10].map(|i| u16::from_be_bytes([header[i], header[i + 1]]));
    let response = flags & 0x8000 != 0;
    // Standard query, inverse (obsolete), status, notify, update; one question
    // (mDNS may send several, or none in an announcement).
    if !matches!(opcode, 0 | 2 | 4 | 5) || rcode > 10 || flags & 0x0040 != 0 {
        return None;
    }
    if counts[0] > 64 || counts.iter().all(|&c| c == 0) || counts[1] > 256 {
        return None;
    }
    if counts[0] == 0 {
        // An answer-only message (mDNS announcement): read the first record's name.
        if !response {
            return None;
        }
    }
    let len = decode_name(msg, 12, name_buf)?;
    let name = std::str::from_utf8(&name_buf[..len]).ok()?;
    Some(Question { name, response })
}

/// A DNS message over TCP: the 2-byte length prefix must match or exceed what follows.
pub fn question_tcp<'n>(data: &[u8], name_buf: &'n mut [u8; MAX_NAME]) -> Option<Question<'n>> {
    let len = usize::from(u16::from_be_bytes(*data.first_chunk()?));
    if len < 12 || data.len() - 2 > len + 2 {
        return None;
    }
    question(&data[2..], name_buf)
}

/// Decodes the name at `at` into `out`; returns its text length.
fn decode_name(msg: &[u8], mut at: usize, out: &mut [u8; MAX_NAME]) -> Option<usize> {
    let mut len = 0usize;
    let mut pointers = 0;
    loop {
        let label_len = *msg.get(at)?;
        match label_len >> 6 {
            0 if label_len == 0 => return Some(len),
            0 => {
                let label = msg.get(at + 1..at + 1 + usize::from(label_len))?;
                let need = usize::from(len != 0) + label.len();
                if len + need > MAX_NAME {
                    return None;
                }
                if len != 0 {
                    out[len] = b'.';
                    len += 1;
                }
                for &b in label {
                    // Keep the text printable; odd bytes are rare and harmless as '?'.
                    out[len] = if b.is_ascii_graphic() {
                        b.to_ascii_lowercase()
                    } else {
                        b'?'
                    };
                    len += 1;
                }
                at += 1 + label.len();
            }
            3 => {
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return None;
                }
                at = usize::from(u16::from_be_bytes([label_len, *msg.get(at + 1)?]) & 0x3fff);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A standard query for `name` (type A).
    pub(crate) fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn reads_the_question() {
        let mut buf = [0; MAX_NAME];
        let q = question(&query("WWW.Example.com"), &mut buf).unwrap();
        assert_eq!(q.name, "www.example.com");
        assert!(!q.response);
        let mut tcp = (query("a.b").len() as u16).to_be_bytes().to_vec();
        tcp.extend_from_slice(&query("a.b"));
        assert_eq!(question_tcp(&tcp, &mut buf).unwrap().name, "a.b");
    }

    #[test]
    fn pointer_loops_and_truncation_are_rejected() {
        let mut buf = [0; MAX_NAME];
        let mut m = query("x");
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 12]); // points at itself
        assert_eq!(question(&m, &mut buf), None);
        let q = query("a.very.long.name.example");
        for cut in 0..q.len() {
            let _ = question(&q[..cut], &mut buf);
        }
        assert_eq!(question(b"GET / HTTP/1.1\r\n\r\n", &mut buf), None);
    }

    #[test]
    fn overlong_names_are_rejected() {
        let mut buf = [0; MAX_NAME];
        let name = vec!["a".repeat(63); 5].join(".");
        assert_eq!(question(&query(&name), &mut buf), None);
    }
}
