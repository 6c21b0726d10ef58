//! STUN (RFC 5389/8489, and RFC 3489's classic form): recognises messages
//! and lists the types of their attributes, some of which only one vendor's
//! agents send (Microsoft's [MS-TURN] and [MS-ICE2] extensions).

/// The RFC 5389 magic cookie.
const MAGIC: u32 = 0x2112_a442;
/// [MS-TURN] 2.2.2: the Magic Cookie attribute, first in each of its messages.
const MS_TURN_COOKIE: [u8; 8] = [0x00, 0x0f, 0x00, 0x04, 0x72, 0xc6, 0x4b, 0xc6];

/// A STUN message, its attributes walked to the last byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The attributes, type-length-value each, padded to 4 bytes.
    attributes: &'a [u8],
}

impl Message<'_> {
    /// The type of each attribute, in order.
    pub fn attribute_types(&self) -> impl Iterator<Item = u16> + '_ {
        let mut rest = self.attributes;
        std::iter::from_fn(move || {
            let (header, _) = rest.split_first_chunk::<4>()?;
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            rest = rest.get((4 + len).next_multiple_of(4)..).unwrap_or(&[]);
            Some(u16::from_be_bytes([header[0], header[1]]))
        })
    }
}

/// Reads a STUN message filling a UDP datagram; None when `data` is not one.
pub fn message(data: &[u8]) -> Option<Message<'_>> {
    parse(data, false)
}

/// Reads the first STUN message of a TCP stream segment: bare (RFC 8489
/// section 6.2.2, messages back to back) or framed with a 2-byte length (RFC 4571,
/// ICE-TCP). Only RFC 5389 messages (with the magic cookie) count here.
pub fn stream_message(data: &[u8]) -> Option<Message<'_>> {
    parse(data, true).or_else(|| {
        let framed = usize::from(u16::from_be_bytes(*data.first_chunk()?));
        let inner = data.get(2..2 + framed)?;
        parse(inner, false).filter(|_| framed >= 20)
    })
}

fn parse(data: &[u8], stream: bool) -> Option<Message<'_>> {
    let header = data.get(..20)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let fits = if stream {
        len + 20 <= data.len() && cookie == MAGIC
    } else {
        len + 20 == data.len()
    };
    if kind & 0xc000 != 0 || len % 4 != 0 || !fits {
        return None;
    }
    let data = &data[..len + 20];
    let method = (kind & 0x000f) | ((kind & 0x00e0) >> 1) | ((kind & 0x3e00) >> 2);
    // Binding, allocate/refresh/send/data/create-permission/channel-bind (TURN), and
    // the classic shared-secret request; others are not seen from real clients.
    // [MS-TURN]'s messages (draft TURN's methods, without RFC 5389's cookie)
    // open with their own: the MAGIC-COOKIE attribute.
    let classic = matches!(kind, 0x0001 | 0x0101 | 0x0111 | 0x0002 | 0x0102 | 0x0112);
    if cookie != MAGIC && !classic && data.get(20..28) != Some(MS_TURN_COOKIE.as_slice()) {
        return None;
    }
    if !matches!(method, 0x001..=0x00a | 0x080..=0x0ff) {
        return None;
    }
    let attributes = &data[20..];
    // Every attribute's value lies within the message.
    let mut rest = attributes;
    while !rest.is_empty() {
        let (header, _) = rest.split_first_chunk::<4>()?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        rest.get(4..4 + len)?;
        rest = rest.get((4 + len).next_multiple_of(4)..).unwrap_or(&[]);
    }
    Some(Message { attributes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC.to_be_bytes());
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn lists_attribute_types() {
        let m = binding(&[
            (0x8022, b"libjingle"),
            (0x0006, b"user"),
            (0x8008, &[0, 0, 0, 6]),
        ]);
        let types: Vec<u16> = message(&m).unwrap().attribute_types().collect();
        assert_eq!(types, [0x8022, 0x0006, 0x8008]);
        assert_eq!(message(&binding(&[])).unwrap().attribute_types().count(), 0);
    }

    #[test]
    fn reads_messages_on_streams() {
        let one = binding(&[(0x8022, b"x")]);
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert_eq!(message(&two), None, "a datagram holds one message");
        assert!(stream_message(&two).is_some());
        let mut framed = (one.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&one);
        assert!(stream_message(&framed).is_some());
        assert_eq!(stream_message(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }

    #[test]
    fn rejects_lookalikes() {
        let mut m = binding(&[]);
        m.push(0);
        assert_eq!(message(&m), None);
        assert_eq!(message(&[0u8; 19]), None);
        let m = binding(&[(0x8022, b"abc")]);
        for cut in 0..m.len() {
            let _ = message(&m[..cut]);
        }
        // An attribute longer than its message.
        let mut m = binding(&[(0x8022, b"abcd")]);
        m[23] = 9;
        assert_eq!(message(&m), None);
    }
}
