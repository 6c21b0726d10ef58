//! DNS messages (RFC 1035): validates the header, reads the first question's
//! name and a response's answers (addresses and aliases, RFC 1035 and 3596).
//!
//! Used for DNS, mDNS and LLMNR, which share the format. Name decoding
//! follows compression pointers at most `MAX_POINTERS` times and never
//! writes past the caller's buffer.

/// Compression pointers followed per name before the message counts as malformed.
const MAX_POINTERS: usize = 16;

/// Longest decoded name (RFC 1035: 255 octets on the wire).
pub const MAX_NAME: usize = 255;

/// Answers read per response at most (a resolver's answer for a CDN name
/// holds a CNAME chain and a handful of addresses).
const MAX_ANSWERS: u16 = 64;

/// One answer record of a response that says where a name leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'n> {
    /// The name is an alias (CNAME) of this one.
    Alias(&'n str),
    /// The name has this address (A or AAAA), for `ttl` seconds.
    Address(std::net::IpAddr, u32),
}

/// Calls `each` with every alias and address in the answer section of the
/// UDP response `msg` (records of class IN; other types are skipped). A
/// message that is no response, or malformed before its end, stops the walk
/// where it breaks: what came before was read.
pub fn answers(msg: &[u8], mut each: impl FnMut(Answer<'_>)) {
    let Some(header) = msg.get(..12) else { return };
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let records = u16::from_be_bytes([header[6], header[7]]);
    // A response (QR), standard query, no error (RCODE 0), not truncated (TC).
    if flags & 0x8000 == 0 || (flags >> 11) & 0xf != 0 || flags & 0xf != 0 || flags & 0x0200 != 0 {
        return;
    }
    let mut at = 12;
    for _ in 0..questions.min(4) {
        let Some(end) = skip_name(msg, at) else {
            return;
        };
        at = end + 4;
    }
    let mut name = [0u8; MAX_NAME];
    for _ in 0..records.min(MAX_ANSWERS) {
        let Some(end) = skip_name(msg, at) else {
            return;
        };
        let Some(fixed) = msg.get(end..end + 10) else {
            return;
        };
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let start = end + 10;
        let Some(data) = msg.get(start..start + len) else {
            return;
        };
        at = start + len;
        if class != 1 {
            continue;
        }
        match (kind, data.len()) {
            (1, 4) => {
                let octets: [u8; 4] = data.try_into().expect("4 bytes");
                each(Answer::Address(octets.into(), ttl));
            }
            (28, 16) => {
                let octets: [u8; 16] = data.try_into().expect("16 bytes");
                each(Answer::Address(octets.into(), ttl));
            }
            (5, _) => {
                if let Some(len) = decode_name(msg, start, &mut name) {
                    if let Ok(alias) = std::str::from_utf8(&name[..len]) {
                        each(Answer::Alias(alias));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The offset just past the name at `at` (its labels, or up to and
/// including the first compression pointer, which ends a name on the wire).
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let label_len = *msg.get(at)?;
        match label_len >> 6 {
            0 if label_len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(label_len),
            3 => return msg.get(at + 1).map(|_| at + 2),
            _ => return None,
        }
    }
}

/// Like [`skip_name`], for a name at `at` whose compression pointer, if it
/// ends in one, points backwards at a name after the header, as encoders write them.
fn skip_name_backwards(msg: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let label_len = *msg.get(at)?;
        match label_len >> 6 {
            0 if label_len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(label_len),
            3 => {
                let target =
                    usize::from(u16::from_be_bytes([label_len, *msg.get(at + 1)?]) & 0x3fff);
                return (12..start).contains(&target).then_some(at + 2);
            }
            _ => return None,
        }
    }
}

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

/// True when `msg` is exactly one well-formed DNS message, checked strictly
/// enough to call a flow on any port DNS (RFC 1035 §4.1): a standard query,
/// notify or update with one question of printable labels and no
/// compression, a query carrying no answers, and every record of a response
/// walked to the message's last byte. Random bytes, and other protocols'
/// messages, almost never end exactly on a record's end.
pub fn is_exact_message(msg: &[u8]) -> bool {
    let Some(header) = msg.get(..12) else {
        return false;
    };
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let [questions, answers, authority, additional] =
        [4, 6, 8, 10].map(|i| u16::from_be_bytes([header[i], header[i + 1]]));
    let (response, opcode, rcode) = (flags & 0x8000 != 0, (flags >> 11) & 0xf, flags & 0xf);
    if !matches!(opcode, 0 | 4 | 5) || flags & 0x0040 != 0 || questions != 1 || rcode > 10 {
        return false;
    }
    // A query: no error, not truncated, not authoritative, no answers; an
    // update's prerequisites and updates ride in the answer and authority counts.
    if !response
        && (rcode != 0
            || flags & 0x0600 != 0
            || (opcode != 5 && (answers != 0 || authority != 0))
            || additional > 1)
    {
        return false;
    }
    let records = u32::from(answers) + u32::from(authority) + u32::from(additional);
    if records > u32::from(MAX_ANSWERS) {
        return false;
    }
    // NetBIOS name service (RFC 1002) shares the format: its names are one
    // label of 32 letters A-P (RFC 1001 §14.1), never a DNS name.
    if msg.get(12) == Some(&32)
        && msg
            .get(13..45)
            .is_some_and(|l| l.iter().all(|b| (b'A'..=b'P').contains(b)))
    {
        return false;
    }
    // The question: labels of printable bytes, no pointer, a type and class.
    let mut at = 12;
    loop {
        let Some(&len) = msg.get(at) else {
            return false;
        };
        if len == 0 {
            break;
        }
        let Some(label) = msg.get(at + 1..at + 1 + usize::from(len)) else {
            return false;
        };
        if len > 63
            || !label.iter().all(u8::is_ascii_graphic)
            || at + 1 + label.len() > 12 + MAX_NAME
        {
            return false;
        }
        at += 1 + label.len();
    }
    let Some(fixed) = msg.get(at + 1..at + 5) else {
        return false;
    };
    let (kind, class) = (
        u16::from_be_bytes([fixed[0], fixed[1]]),
        u16::from_be_bytes([fixed[2], fixed[3]]),
    );
    if kind == 0 || !matches!(class, 1 | 3 | 254 | 255) {
        return false;
    }
    at += 5;
    // Every record: its name (a pointer only backwards, into what came before),
    // type, class, TTL and data, ending exactly where the message ends.
    for _ in 0..records {
        let Some(end) = skip_name_backwards(msg, at) else {
            return false;
        };
        let Some(fixed) = msg.get(end..end + 10) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        at = end + 10 + len;
        if at > msg.len() {
            return false;
        }
    }
    at == msg.len()
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
    fn exact_messages_are_told_from_look_alikes() {
        let q = query("www.example.com");
        assert!(is_exact_message(&q));
        let answer = response(
            "www.example.com",
            &[(1, vec![192, 0, 2, 1]), (1, vec![192, 0, 2, 2])],
        );
        assert!(is_exact_message(&answer));
        // With an EDNS OPT record (root name, type 41) after the question.
        let mut edns = q.clone();
        edns[11] = 1;
        edns.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert!(is_exact_message(&edns));
        let mut bad = Vec::new();
        // A byte too many or too few: not where a record ends.
        let mut longer = answer.clone();
        longer.push(0);
        bad.push(longer);
        bad.push(answer[..answer.len() - 1].to_vec());
        // A query that carries an answer, a question count of 2, a compressed
        // question, a pointer forwards, an unprintable label, a class of 0.
        let mut with_answer = q.clone();
        with_answer[7] = 1;
        bad.push(with_answer);
        let mut two = q.clone();
        two[5] = 2;
        bad.push(two);
        let mut compressed = q[..12].to_vec();
        compressed.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        bad.push(compressed);
        let mut forwards = answer.clone();
        let record = q.len();
        forwards[record + 1] = 0xff;
        bad.push(forwards);
        let mut control = q.clone();
        control[13] = 0x07;
        bad.push(control);
        let mut class0 = q.clone();
        let n = class0.len();
        class0[n - 1] = 0;
        bad.push(class0);
        bad.push(q[..11].to_vec());
        // A NetBIOS name query (RFC 1002 §4.2.12) for "WORKGROUP".
        let mut netbios = vec![0x81, 0x2f, 0x01, 0x10, 0, 1, 0, 0, 0, 0, 0, 0, 32];
        netbios.extend_from_slice(b"FHEPFCELEHFCEPFFFACACACACACACABN");
        netbios.extend_from_slice(&[0, 0, 0x20, 0, 1]);
        bad.push(netbios);
        for m in &bad {
            assert!(!is_exact_message(m), "{m:02x?}");
        }
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

    /// A response to [`query`] for `name` with `records` (name pointer to
    /// the question, type, data), each with a TTL of 300 s.
    pub(crate) fn response(name: &str, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = query(name);
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = records.len() as u8;
        for (kind, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&kind.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 1, 44]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    /// A name in wire form.
    pub(crate) fn wire_name(name: &str) -> Vec<u8> {
        let mut w = Vec::new();
        for label in name.split('.') {
            w.push(label.len() as u8);
            w.extend_from_slice(label.as_bytes());
        }
        w.push(0);
        w
    }

    fn read_answers(msg: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        answers(msg, |a| {
            seen.push(match a {
                Answer::Alias(n) => format!("alias {n}"),
                Answer::Address(ip, ttl) => format!("{ip} {ttl}"),
            })
        });
        seen
    }

    #[test]
    fn reads_aliases_and_addresses_of_a_response() {
        let msg = response(
            "www.netflix.com",
            &[
                (5, wire_name("www.dradis.netflix.com")),
                (1, vec![192, 0, 2, 7]),
                (
                    28,
                    [0x20, 1, 0x0d, 0xb8]
                        .into_iter()
                        .chain([0; 11])
                        .chain([9])
                        .collect(),
                ),
                (16, b"\x05hello".to_vec()),
            ],
        );
        assert_eq!(
            read_answers(&msg),
            [
                "alias www.dradis.netflix.com",
                "192.0.2.7 300",
                "2001:db8::9 300"
            ]
        );
        // A query, an error, a truncated answer: nothing.
        assert!(read_answers(&query("www.netflix.com")).is_empty());
        let mut failed = msg.clone();
        failed[3] |= 3;
        assert!(read_answers(&failed).is_empty());
        // Cut anywhere: what was whole before the cut, never a panic.
        for cut in 0..msg.len() {
            assert!(read_answers(&msg[..cut]).len() <= 3);
        }
    }

    #[test]
    fn overlong_names_are_rejected() {
        let mut buf = [0; MAX_NAME];
        let name = vec!["a".repeat(63); 5].join(".");
        assert_eq!(question(&query(&name), &mut buf), None);
    }
}
