//! TLS ClientHello reader: server name (SNI) and the first ALPN protocol.
//!
//! Sans-IO over byte slices. [`client_hello_from_records`] takes the bytes a
//! client sent on a TCP stream (TLS records); [`client_hello`] takes a bare
//! handshake message, as QUIC carries it in CRYPTO frames. Both read only
//! what is present and say how much more they need, so the caller can
//! reassemble a hello split across segments or packets without guessing.

/// Largest handshake message this reader waits for (a ClientHello with a
/// post-quantum key share is about 1.8 KB; 16 KiB is the record limit).
pub const MAX_HELLO_LEN: usize = 16 * 1024;

/// TLS record content type: handshake.
const RECORD_HANDSHAKE: u8 = 22;
/// Handshake type: ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Handshake type: ServerHello.
const HANDSHAKE_SERVER_HELLO: u8 = 2;
/// Extension: server_name (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension: application_layer_protocol_negotiation (RFC 7301).
const EXT_ALPN: u16 = 16;

/// What a ClientHello reveals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The first host name of the server_name extension.
    pub server_name: Option<&'a str>,
    /// The first protocol of the ALPN extension (e.g. `h2`, `dot`).
    pub alpn: Option<&'a [u8]>,
}

/// Outcome of reading the start of a TLS stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello<'a> {
    /// A complete ClientHello.
    Client(ClientHello<'a>),
    /// A ServerHello: the stream is TLS, seen from the server's side.
    Server,
    /// A valid TLS record that is neither hello (application data, alert,
    /// a later handshake message): the stream is TLS, started before the capture.
    OtherRecord,
    /// Valid so far; the hello needs this many bytes in all.
    Incomplete {
        /// Total bytes (from the start of the slice) needed to finish the hello.
        needed: usize,
    },
    /// Not TLS, or malformed.
    NotTls,
}

/// Reads the first TLS record(s) of a stream. A handshake message split
/// over several records is not followed (servers and clients send the
/// hello in one record in practice); its first record is read as far as it goes.
pub fn client_hello_from_records(data: &[u8]) -> Hello<'_> {
    let Some(header) = data.get(..5) else {
        return if plausible_record_prefix(data) {
            Hello::Incomplete { needed: 5 }
        } else {
            Hello::NotTls
        };
    };
    let content_type = header[0];
    let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if !(20..=24).contains(&content_type)
        || header[1] != 3
        || header[2] > 4
        || record_len == 0
        || record_len > MAX_HELLO_LEN + 2048
    {
        return Hello::NotTls;
    }
    if content_type != RECORD_HANDSHAKE {
        return Hello::OtherRecord;
    }
    let body = &data[5..data.len().min(5 + record_len)];
    match body.first() {
        None => Hello::Incomplete { needed: 6 },
        Some(&HANDSHAKE_SERVER_HELLO) => Hello::Server,
        Some(&HANDSHAKE_CLIENT_HELLO) => match client_hello(body) {
            // The whole handshake message after this record's header (a
            // message spanning records is read as far as its first record goes).
            Hello::Incomplete { needed } => Hello::Incomplete { needed: needed + 5 },
            other => other,
        },
        Some(_) => Hello::OtherRecord,
    }
}

/// True when `data` could be the start of a TLS record header.
fn plausible_record_prefix(data: &[u8]) -> bool {
    match data {
        [] => true,
        [t, rest @ ..] => {
            (20..=24).contains(t)
                && rest.first().is_none_or(|&major| major == 3)
                && rest.get(1).is_none_or(|&minor| minor <= 4)
        }
    }
}

/// Reads a bare handshake message that should be a ClientHello.
pub fn client_hello(msg: &[u8]) -> Hello<'_> {
    let Some(&[msg_type, l0, l1, l2]) = msg.first_chunk::<4>() else {
        return if msg.first().is_none_or(|&t| t == HANDSHAKE_CLIENT_HELLO) {
            Hello::Incomplete { needed: 4 }
        } else {
            Hello::NotTls
        };
    };
    if msg_type != HANDSHAKE_CLIENT_HELLO {
        return if msg_type == HANDSHAKE_SERVER_HELLO {
            Hello::Server
        } else {
            Hello::NotTls
        };
    }
    let len = (usize::from(l0) << 16) | (usize::from(l1) << 8) | usize::from(l2);
    if !(38..=MAX_HELLO_LEN).contains(&len) {
        return Hello::NotTls;
    }
    if msg.len() < 4 + len {
        // The server name sits early in most hellos: take it from the part
        // present if it is there, else ask for the rest.
        return match parse_body(&msg[4..], true) {
            Some(hello) if hello.server_name.is_some() => Hello::Client(hello),
            Some(_) => Hello::Incomplete { needed: 4 + len },
            None => Hello::NotTls,
        };
    }
    match parse_body(&msg[4..4 + len], false) {
        Some(hello) => Hello::Client(hello),
        None => Hello::NotTls,
    }
}

/// Outcome of looking for the server's certificate in its first flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateSearch {
    /// The callback accepted a name from the leaf certificate.
    Accepted,
    /// The leaf certificate was read; no name was accepted.
    Rejected,
    /// Valid so far; more of the stream is needed.
    Incomplete,
    /// No certificate in clear text (TLS 1.3 encrypts it), or not TLS.
    Absent,
}

/// Handshake type: Certificate.
const HANDSHAKE_CERTIFICATE: u8 = 11;

/// Reads the records a TLS server sent (up to 1.2, where the certificate is in
/// clear text) and offers each printable common name (issuer's and subject's)
/// and DNS subject-alternative name of the leaf certificate to `accept`, until
/// it returns true. A
/// certificate cut short by the end of `data` is read as far as it goes.
pub fn server_certificate_names<'a>(
    data: &'a [u8],
    mut accept: impl FnMut(&'a str) -> bool,
) -> CertificateSearch {
    let mut rest = data;
    while !rest.is_empty() {
        let Some(header) = rest.get(..5) else {
            return CertificateSearch::Incomplete;
        };
        if header[1] != 3 || !(20..=24).contains(&header[0]) {
            return CertificateSearch::Absent;
        }
        if header[0] != RECORD_HANDSHAKE {
            // ChangeCipherSpec or application data before any certificate: TLS 1.3.
            return CertificateSearch::Absent;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let body = &rest[5..rest.len().min(5 + len)];
        let mut messages = body;
        while let Some(&[kind, l0, l1, l2]) = messages.first_chunk::<4>() {
            let msg_len = (usize::from(l0) << 16) | (usize::from(l1) << 8) | usize::from(l2);
            let msg = &messages[4..messages.len().min(4 + msg_len)];
            if kind == HANDSHAKE_CERTIFICATE {
                // certificate_list<3>, then the first ASN.1Cert<3>.
                let Some(cert_len) = msg.get(3..6) else {
                    return CertificateSearch::Incomplete;
                };
                let cert_len = (usize::from(cert_len[0]) << 16)
                    | (usize::from(cert_len[1]) << 8)
                    | usize::from(cert_len[2]);
                let der = &msg[6..msg.len().min(6 + cert_len)];
                return if der_names(der, &mut accept) {
                    CertificateSearch::Accepted
                } else if der.len() < cert_len {
                    CertificateSearch::Incomplete
                } else {
                    CertificateSearch::Rejected
                };
            }
            if 4 + msg_len > messages.len() {
                break; // continues in the next record
            }
            messages = &messages[4 + msg_len..];
        }
        if rest.len() < 5 + len {
            return CertificateSearch::Incomplete;
        }
        rest = &rest[5 + len..];
    }
    CertificateSearch::Incomplete
}

/// Offers the common names (OID 2.5.4.3) and DNS subject-alternative names
/// (OID 2.5.29.17) found in a DER certificate, or the part of it present;
/// true when `accept` took one. A scan, not a full X.509 parse: every value
/// is bounds-checked and must look like a host name.
fn der_names<'a>(der: &'a [u8], accept: &mut impl FnMut(&'a str) -> bool) -> bool {
    const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    const SAN: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    let mut at = 0;
    while let Some(pos) = der[at..].windows(5).position(|w| w == CN || w == SAN) {
        let start = at + pos;
        at = start + 5;
        let after = &der[at..];
        if &der[start..start + 5] == CN {
            // A string type, a short length, the name.
            if let [tag, len, value @ ..] = after {
                let name = value
                    .get(..usize::from(*len))
                    .filter(|_| matches!(tag, 0x0c | 0x13 | 0x16 | 0x14));
                if let Some(name) =
                    name.and_then(|n| subject_name(n.strip_prefix(b"*.").unwrap_or(n)))
                {
                    if accept(name) {
                        return true;
                    }
                }
            }
            continue;
        }
        // SAN: [critical BOOLEAN] OCTET STRING { SEQUENCE { GeneralName... } }
        let mut r = Reader { data: after };
        if r.data.first() == Some(&0x01) {
            r.take(3);
        }
        let (Some(0x04), Some(_)) = (r.u8(), der_len(&mut r)) else {
            continue;
        };
        let (Some(0x30), Some(seq_len)) = (r.u8(), der_len(&mut r)) else {
            continue;
        };
        let mut names = Reader {
            data: &r.data[..r.data.len().min(seq_len)],
        };
        while let (Some(tag), Some(len)) = (names.u8(), der_len(&mut names)) {
            let Some(value) = names.take(len) else {
                break;
            };
            if tag == 0x82 {
                if let Some(name) = host_name(value.strip_prefix(b"*.").unwrap_or(value)) {
                    if accept(name) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// A common name as text: printable ASCII (a host name, or a product name such as `AnyDesk Client`).
fn subject_name(bytes: &[u8]) -> Option<&str> {
    let printable = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes.iter().all(|&b| b == b' ' || b.is_ascii_graphic());
    printable.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// A DER length (short form, or long form of up to two bytes).
fn der_len(r: &mut Reader<'_>) -> Option<usize> {
    match r.u8()? {
        n if n < 0x80 => Some(usize::from(n)),
        0x81 => r.u8().map(usize::from),
        0x82 => r.u16().map(usize::from),
        _ => None,
    }
}

/// A cursor over big-endian fields that fails instead of panicking.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.data.split_at_checked(n)?;
        self.data = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Parses a ClientHello body. With `partial`, running out of bytes inside
/// the extensions ends the walk with what was found instead of failing.
fn parse_body(body: &[u8], partial: bool) -> Option<ClientHello<'_>> {
    let mut r = Reader { data: body };
    let version = r.u16()?;
    if version >> 8 != 3 {
        return None;
    }
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    let compression = r.vec8()?;
    if compression.is_empty() {
        return None;
    }
    let mut hello = ClientHello::default();
    if r.data.is_empty() {
        return Some(hello); // no extensions (SSLv3-style hello)
    }
    let declared = usize::from(r.u16()?);
    let mut ext = Reader {
        data: &r.data[..r.data.len().min(declared)],
    };
    if !partial && r.data.len() < declared {
        return None;
    }
    while !ext.data.is_empty() {
        let (Some(kind), Some(data)) = (ext.u16(), ext.vec16()) else {
            return partial.then_some(hello);
        };
        match kind {
            EXT_SERVER_NAME => hello.server_name = server_name(data),
            EXT_ALPN => hello.alpn = first_alpn(data),
            _ => {}
        }
    }
    Some(hello)
}

/// The first host_name entry of a server_name extension, if it is a plausible DNS name.
fn server_name(data: &[u8]) -> Option<&str> {
    let mut r = Reader { data };
    let mut list = Reader { data: r.vec16()? };
    while !list.data.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            return host_name(name);
        }
    }
    None
}

/// The first protocol name of an ALPN extension.
fn first_alpn(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader { data };
    let mut list = Reader { data: r.vec16()? };
    list.vec8().filter(|p| !p.is_empty())
}

/// `bytes` as a host name if every byte is one a DNS name may carry.
pub fn host_name(bytes: &[u8]) -> Option<&str> {
    if bytes.is_empty() || bytes.len() > 253 {
        return None;
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
    {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello handshake message with the given SNI and ALPN and `pad` bytes of padding extension.
    pub(crate) fn hello_message(sni: Option<&str>, alpn: Option<&str>, pad: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let n = name.len() as u16;
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        if let Some(p) = alpn {
            let n = p.len() as u16;
            ext.extend_from_slice(&16u16.to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.extend_from_slice(&(n + 1).to_be_bytes());
            ext.push(n as u8);
            ext.extend_from_slice(p.as_bytes());
        }
        if pad > 0 {
            ext.extend_from_slice(&21u16.to_be_bytes());
            ext.extend_from_slice(&(pad as u16).to_be_bytes());
            ext.resize(ext.len() + pad, 0);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message in one TLS record.
    pub(crate) fn record(msg: &[u8]) -> Vec<u8> {
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(msg);
        rec
    }

    #[test]
    fn reads_sni_and_alpn() {
        let rec = record(&hello_message(Some("www.example.com"), Some("h2"), 0));
        let Hello::Client(h) = client_hello_from_records(&rec) else {
            panic!("not a hello")
        };
        assert_eq!(h.server_name, Some("www.example.com"));
        assert_eq!(h.alpn, Some(&b"h2"[..]));
    }

    #[test]
    fn hello_without_sni_is_still_a_hello() {
        let rec = record(&hello_message(None, None, 0));
        assert_eq!(
            client_hello_from_records(&rec),
            Hello::Client(ClientHello::default())
        );
    }

    #[test]
    fn split_hello_asks_for_the_rest() {
        let rec = record(&hello_message(None, Some("h2"), 1500));
        match client_hello_from_records(&rec[..700]) {
            Hello::Incomplete { needed } => assert_eq!(needed, rec.len()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(client_hello_from_records(&rec), Hello::Client(_)));
        assert_eq!(
            client_hello_from_records(&rec[..3]),
            Hello::Incomplete { needed: 5 }
        );
    }

    #[test]
    fn sni_in_the_first_segment_is_enough() {
        let rec = record(&hello_message(Some("a.example"), None, 1500));
        assert!(matches!(
            client_hello_from_records(&rec[..200]),
            Hello::Client(ClientHello {
                server_name: Some("a.example"),
                ..
            })
        ));
    }

    #[test]
    fn other_records_and_garbage() {
        assert_eq!(
            client_hello_from_records(&[23, 3, 3, 0, 10, 1, 2]),
            Hello::OtherRecord
        );
        assert_eq!(
            client_hello_from_records(b"GET / HTTP/1.1\r\n"),
            Hello::NotTls
        );
        assert_eq!(client_hello_from_records(&[22, 3, 3, 0, 0]), Hello::NotTls);
        assert_eq!(
            client_hello_from_records(&[22, 3, 3, 0, 4, 2, 0, 0, 0]),
            Hello::Server
        );
    }

    #[test]
    fn every_truncation_and_corruption_is_handled() {
        let rec = record(&hello_message(Some("x.example.org"), Some("http/1.1"), 40));
        for cut in 0..rec.len() {
            let _ = client_hello_from_records(&rec[..cut]);
        }
        for i in 0..rec.len() {
            for v in [0u8, 0xff, 0x80] {
                let mut bad = rec.clone();
                bad[i] = v;
                let _ = client_hello_from_records(&bad);
            }
        }
    }

    /// A minimal "certificate": issuer CN, subject CN, SAN with two DNS names.
    fn certificate(cn: &str, sans: &[&str]) -> Vec<u8> {
        let mut der = vec![0x30, 0x82, 0, 0];
        for name in ["Some Issuing CA", cn] {
            der.extend_from_slice(&[0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, name.len() as u8]);
            der.extend_from_slice(name.as_bytes());
        }
        let mut seq = Vec::new();
        for s in sans {
            seq.extend_from_slice(&[0x82, s.len() as u8]);
            seq.extend_from_slice(s.as_bytes());
        }
        der.extend_from_slice(&[
            0x06,
            0x03,
            0x55,
            0x1d,
            0x11,
            0x04,
            seq.len() as u8 + 2,
            0x30,
            seq.len() as u8,
        ]);
        der.extend_from_slice(&seq);
        der
    }

    /// ServerHello and Certificate handshake messages in one record.
    pub(crate) fn server_flight(cn: &str, sans: &[&str]) -> Vec<u8> {
        let cert = certificate(cn, sans);
        let mut msgs = vec![2, 0, 0, 4, 3, 3, 0, 0];
        let list = cert.len() + 3;
        msgs.push(HANDSHAKE_CERTIFICATE);
        msgs.extend_from_slice(&((list + 3) as u32).to_be_bytes()[1..]);
        msgs.extend_from_slice(&(list as u32).to_be_bytes()[1..]);
        msgs.extend_from_slice(&(cert.len() as u32).to_be_bytes()[1..]);
        msgs.extend_from_slice(&cert);
        let mut rec = vec![22, 3, 3];
        rec.extend_from_slice(&(msgs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msgs);
        rec
    }

    #[test]
    fn reads_certificate_names() {
        let flight = server_flight("*.anydesk.com", &["www.example.net", "b.example.org"]);
        let mut seen = Vec::new();
        let r = server_certificate_names(&flight, |n| {
            seen.push(n.to_owned());
            false
        });
        assert_eq!(r, CertificateSearch::Rejected);
        assert_eq!(
            seen,
            [
                "Some Issuing CA",
                "anydesk.com",
                "www.example.net",
                "b.example.org"
            ]
        );
        assert_eq!(
            server_certificate_names(&flight, |n| n == "www.example.net"),
            CertificateSearch::Accepted
        );
        for cut in 0..flight.len() {
            let r = server_certificate_names(&flight[..cut], |_| false);
            assert_ne!(r, CertificateSearch::Accepted);
        }
        assert_eq!(
            server_certificate_names(&[23, 3, 3, 0, 1, 0], |_| true),
            CertificateSearch::Absent
        );
    }

    #[test]
    fn host_names_are_checked() {
        assert_eq!(host_name(b"a-b.c_d.example"), Some("a-b.c_d.example"));
        assert_eq!(host_name(b"bad name"), None);
        assert_eq!(host_name(b""), None);
        assert_eq!(host_name(b"\xff"), None);
    }
}
