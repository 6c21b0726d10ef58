//! QUIC Initial packets: find the client's ClientHello (RFC 9000, 9001, 9369).
//!
//! A client's first datagram carries an Initial packet protected with keys
//! anyone can derive from its Destination Connection ID and the version's
//! public salt. [`open_client_initial`] removes header protection, decrypts
//! the payload with ring's AES-128-GCM and hands each CRYPTO frame to the
//! caller, which reassembles the ClientHello (it may span packets, and
//! clients deliberately send its pieces out of order).
//!
//! Google QUIC (Q043/Q046) sends its hello (`CHLO`) in clear text;
//! [`gquic_server_name`] reads the SNI tag from it.

use ring::aead::{self, quic, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

/// Largest datagram decrypted (larger ones are classified as QUIC without opening them).
pub const MAX_DATAGRAM: usize = 4096;

/// QUIC versions whose Initial packets this module opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// RFC 9000 (and drafts 33–34, which share its salt).
    V1,
    /// RFC 9369.
    V2,
    /// IETF drafts 29–32.
    Draft29,
    /// IETF drafts 23–28, and Facebook's mvfst versions built on them.
    Draft23,
    /// IETF draft 22 and mvfst's first version.
    Draft22,
    /// Google's QUIC over TLS, T050/T051.
    T051,
    /// Google QUIC with its own crypto handshake (Q0xx): the hello is in clear text up to Q046.
    GoogleQ,
    /// A long header of a version not opened here (reserved, Q050, experiments, version negotiation).
    Other,
}

impl Version {
    fn from_wire(v: u32) -> Option<Version> {
        match v {
            0x0000_0001 | 0xff00_0021 | 0xff00_0022 => Some(Version::V1),
            0x6b33_43cf => Some(Version::V2),
            0xff00_001d..=0xff00_0020 => Some(Version::Draft29),
            0xff00_0017..=0xff00_001c | 0xface_b002 | 0xface_b00e => Some(Version::Draft23),
            0xff00_0016 | 0xface_b001 => Some(Version::Draft22),
            0x5430_3530 | 0x5430_3531 => Some(Version::T051),
            0x5130_3330..=0x5130_3436 => Some(Version::GoogleQ), // Q030..Q046
            // Version negotiation, reserved versions that force it (0x?a?a?a?a),
            // other IETF drafts, Q050 and vendor experiments.
            0
            | 0xff00_0000..=0xff00_00ff
            | 0x5130_3530..=0x5130_3939
            | 0xface_b000..=0xface_b0ff => Some(Version::Other),
            v if v & 0x0f0f_0f0f == 0x0a0a_0a0a => Some(Version::Other),
            _ => None,
        }
    }

    fn salt(self) -> &'static [u8; 20] {
        match self {
            Version::V1 => &[
                0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8,
                0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
            ],
            Version::V2 => &[
                0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26,
                0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
            ],
            Version::Draft29 => &[
                0xaf, 0xbf, 0xec, 0x28, 0x99, 0x93, 0xd2, 0x4c, 0x9e, 0x97, 0x86, 0xf1, 0x9c, 0x61,
                0x11, 0xe0, 0x43, 0x90, 0xa8, 0x99,
            ],
            Version::Draft23 => &[
                0xc3, 0xee, 0xf7, 0x12, 0xc7, 0x2e, 0xbb, 0x5a, 0x11, 0xa7, 0xd2, 0x43, 0x2b, 0xb4,
                0x63, 0x65, 0xbe, 0xf9, 0xf5, 0x02,
            ],
            Version::Draft22 => &[
                0x7f, 0xbc, 0xdb, 0x0e, 0x7c, 0x66, 0xbb, 0xe9, 0x19, 0x3a, 0x96, 0xcd, 0x21, 0x51,
                0x9e, 0xbd, 0x7a, 0x02, 0x64, 0x4a,
            ],
            Version::T051 | Version::GoogleQ | Version::Other => &[
                0x7a, 0x4e, 0xde, 0xf4, 0xe7, 0xcc, 0xee, 0x5f, 0xa4, 0x50, 0x6c, 0x19, 0x12, 0x4f,
                0xc8, 0xcc, 0xda, 0x6e, 0x03, 0x3d,
            ],
        }
    }

    /// Long-header packet type bits (0..=3) that mean Initial.
    fn initial_type(self) -> u8 {
        match self {
            Version::V2 => 1,
            _ => 0,
        }
    }

    fn labels(self) -> (&'static [u8], &'static [u8], &'static [u8]) {
        match self {
            Version::V2 => (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
            _ => (b"quic key", b"quic iv", b"quic hp"),
        }
    }
}

/// What [`open_client_initial`] found in a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Initial {
    /// Not a QUIC long-header packet of a known version.
    NotQuic,
    /// A QUIC long-header packet that is not a client Initial, or one that
    /// did not open (a server's Initial, a retransmission with other keys).
    Quic(Version),
    /// An opened client Initial; its frames are `scratch[plain]` (see [`crypto_frames`]).
    Opened(Version, std::ops::Range<usize>),
}

/// HKDF output length for ring's `expand`.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// TLS 1.3 HKDF-Expand-Label with an empty context.
fn expand_label(secret: &hkdf::Prk, label: &[u8], out: &mut [u8]) -> bool {
    let Ok(len) = u16::try_from(out.len()) else {
        return false;
    };
    let Ok(label_len) = u8::try_from(6 + label.len()) else {
        return false;
    };
    let info: [&[u8]; 5] = [&len.to_be_bytes(), &[label_len], b"tls13 ", label, &[0]];
    secret
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .is_ok()
}

/// A QUIC variable-length integer (RFC 9000 §16) at the front of `data`; returns it and its length.
pub fn varint(data: &[u8]) -> Option<(u64, usize)> {
    let first = *data.first()?;
    let len = 1usize << (first >> 6);
    let bytes = data.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &b in &bytes[1..] {
        v = (v << 8) | u64::from(b);
    }
    Some((v, len))
}

/// Keys protecting a client's Initial packets.
struct InitialKeys {
    aead: LessSafeKey,
    iv: [u8; 12],
    hp: quic::HeaderProtectionKey,
}

impl InitialKeys {
    fn derive(version: Version, dcid: &[u8]) -> Option<InitialKeys> {
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, version.salt()).extract(dcid);
        let mut client = [0u8; 32];
        if !expand_label(&initial, b"client in", &mut client) {
            return None;
        }
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &client);
        let (key_label, iv_label, hp_label) = version.labels();
        let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
        if !(expand_label(&client, key_label, &mut key)
            && expand_label(&client, iv_label, &mut iv)
            && expand_label(&client, hp_label, &mut hp))
        {
            return None;
        }
        Some(InitialKeys {
            aead: LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).ok()?),
            iv,
            hp: quic::HeaderProtectionKey::new(&quic::AES_128, &hp).ok()?,
        })
    }
}

/// The version of a QUIC long-header packet at the start of `datagram`.
pub fn version(datagram: &[u8]) -> Option<Version> {
    long_header(datagram).map(|(v, _)| v)
}

/// Opens the first packet of `datagram` if it is a client Initial.
/// `scratch` receives the decrypted packet; datagrams longer than it are not opened.
pub fn open_client_initial(datagram: &[u8], scratch: &mut [u8]) -> Initial {
    let Some((version, header)) = long_header(datagram) else {
        return Initial::NotQuic;
    };
    if matches!(version, Version::GoogleQ | Version::Other) {
        return Initial::Quic(version);
    }
    let packet_type = (datagram[0] >> 4) & 3;
    if packet_type != version.initial_type() || header.dcid.len() < 8 {
        return Initial::Quic(version);
    }
    let Some(end) = header.pn_offset.checked_add(header.length) else {
        return Initial::Quic(version);
    };
    if end > datagram.len() || end > scratch.len() || header.length < 20 {
        return Initial::Quic(version);
    }
    let Some(keys) = InitialKeys::derive(version, header.dcid) else {
        return Initial::Quic(version);
    };
    let packet = &mut scratch[..end];
    packet.copy_from_slice(&datagram[..end]);
    let sample = &packet[header.pn_offset + 4..header.pn_offset + 20];
    let Ok(mask) = keys.hp.new_mask(sample) else {
        return Initial::Quic(version);
    };
    packet[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(packet[0] & 3) + 1;
    let mut nonce = keys.iv;
    for i in 0..pn_len {
        packet[header.pn_offset + i] ^= mask[1 + i];
        nonce[12 - pn_len + i] ^= packet[header.pn_offset + i];
    }
    let (aad, payload) = packet.split_at_mut(header.pn_offset + pn_len);
    let Ok(plain) = keys.aead.open_in_place(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&*aad),
        payload,
    ) else {
        return Initial::Quic(version);
    };
    let start = header.pn_offset + pn_len;
    Initial::Opened(version, start..start + plain.len())
}

/// The fields of a long header that matter here.
struct LongHeader<'a> {
    dcid: &'a [u8],
    /// Offset of the (protected) packet number.
    pn_offset: usize,
    /// The Length field: packet number plus protected payload.
    length: usize,
}

/// Reads a long header of a known version (the Length field only for Initial-shaped packets).
fn long_header(d: &[u8]) -> Option<(Version, LongHeader<'_>)> {
    let first = *d.first()?;
    let google = LongHeader {
        dcid: &[],
        pn_offset: 0,
        length: 0,
    };
    if first & 0x80 == 0 {
        // Google QUIC public header (up to Q043): flags with "version present"
        // and an 8-byte connection id, then a Q0xx version tag.
        let tag = d.get(9..13)?;
        let is_gquic = first & 0x09 == 0x09
            && first & 0x40 == 0
            && tag[0] == b'Q'
            && tag[1..].iter().all(u8::is_ascii_digit);
        return is_gquic.then_some((Version::GoogleQ, google));
    }
    let version = Version::from_wire(u32::from_be_bytes(*d.get(1..5)?.first_chunk()?))?;
    if matches!(version, Version::GoogleQ | Version::Other) {
        // Q046 uses the IETF long-header layout with fixed 8-byte ids.
        return Some((version, google));
    }
    if first & 0x40 == 0 {
        return None; // fixed bit
    }
    let dcid_len = usize::from(*d.get(5)?);
    if dcid_len > 20 {
        return None;
    }
    let dcid = d.get(6..6 + dcid_len)?;
    let mut at = 6 + dcid_len;
    let scid_len = usize::from(*d.get(at)?);
    if scid_len > 20 {
        return None;
    }
    at += 1 + scid_len;
    let mut length = 0;
    if (first >> 4) & 3 == version.initial_type() {
        let (token_len, n) = varint(d.get(at..)?)?;
        at = at
            .checked_add(n)?
            .checked_add(usize::try_from(token_len).ok()?)?;
        let (len, n) = varint(d.get(at..)?)?;
        at += n;
        length = usize::try_from(len).ok()?;
    }
    Some((
        version,
        LongHeader {
            dcid,
            pn_offset: at,
            length,
        },
    ))
}

/// Walks the frames of an opened Initial packet, passing each CRYPTO frame's
/// (offset, bytes) on; stops at the first frame type an Initial may not carry.
pub fn crypto_frames(mut p: &[u8], mut on_crypto: impl FnMut(u64, &[u8])) {
    fn skip_varints(p: &mut &[u8], n: usize) -> Option<u64> {
        let mut last = 0;
        for _ in 0..n {
            let (v, len) = varint(p)?;
            *p = &p[len..];
            last = v;
        }
        Some(last)
    }
    while let Some((kind, n)) = varint(p) {
        p = &p[n..];
        let ok = match kind {
            0x00 | 0x01 => Some(()), // PADDING, PING
            0x02 | 0x03 => (|| {
                skip_varints(&mut p, 2)?; // largest acknowledged, delay
                let ranges = skip_varints(&mut p, 1)?;
                skip_varints(&mut p, 1)?; // first range
                for _ in 0..ranges.min(256) {
                    skip_varints(&mut p, 2)?;
                }
                if kind == 0x03 {
                    skip_varints(&mut p, 3)?;
                }
                Some(())
            })(),
            0x06 => (|| {
                let offset = skip_varints(&mut p, 1)?;
                let len = usize::try_from(skip_varints(&mut p, 1)?).ok()?;
                let (data, rest) = p.split_at_checked(len)?;
                on_crypto(offset, data);
                p = rest;
                Some(())
            })(),
            _ => None,
        };
        if ok.is_none() {
            return;
        }
    }
}

/// The SNI tag of a Google QUIC clear-text client hello (`CHLO`) in `datagram`.
pub fn gquic_server_name(datagram: &[u8]) -> Option<&str> {
    let at = datagram.windows(4).take(64).position(|w| w == b"CHLO")?;
    let msg = &datagram[at..];
    let entries = usize::from(u16::from_le_bytes(*msg.get(4..6)?.first_chunk()?));
    let table = msg.get(8..8 + entries.checked_mul(8)?)?;
    let values = &msg[8 + entries * 8..];
    let mut start = 0usize;
    for entry in table.chunks_exact(8) {
        let end = u32::from_le_bytes(*entry[4..].first_chunk()?) as usize;
        if &entry[..4] == b"SNI\0" {
            return crate::dpi::tls::host_name(values.get(start..end)?);
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9001 Appendix A.1: the client Initial keys for DCID 8394c8f03e515708.
    #[test]
    fn derives_rfc9001_keys() {
        let dcid = hex("8394c8f03e515708");
        let keys = InitialKeys::derive(Version::V1, &dcid).unwrap();
        assert_eq!(keys.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        let sample = hex("d1b1c98dd7689fb8ec11d242b123dc9b");
        assert_eq!(
            keys.hp.new_mask(&sample).unwrap().to_vec(),
            hex("437b9aec36")
        );
    }

    /// RFC 9369 Appendix A.1: version 2 client keys for the same DCID.
    #[test]
    fn derives_rfc9369_keys() {
        let dcid = hex("8394c8f03e515708");
        let keys = InitialKeys::derive(Version::V2, &dcid).unwrap();
        assert_eq!(keys.iv.to_vec(), hex("91f73e2351d8fa91660e909f"));
    }

    #[test]
    fn varints() {
        assert_eq!(
            varint(&hex("c2197c5eff14e88c")),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(varint(&hex("9d7f3e7d")), Some((494_878_333, 4)));
        assert_eq!(varint(&hex("7bbd")), Some((15_293, 2)));
        assert_eq!(varint(&hex("25")), Some((37, 1)));
        assert_eq!(varint(&hex("7b")), None);
    }

    #[test]
    fn opens_a_sealed_initial() {
        let hello = crate::dpi::tls::tests::hello_message(Some("quic.example"), Some("h3"), 0);
        for version in [Version::V1, Version::V2] {
            let datagram = tests_support::seal_initial(version, &[0x11; 8], &hello, 0);
            let mut scratch = [0u8; MAX_DATAGRAM];
            let mut got = Vec::new();
            let Initial::Opened(v, plain) = open_client_initial(&datagram, &mut scratch) else {
                panic!("not opened");
            };
            assert_eq!(v, version);
            crypto_frames(&scratch[plain], |off, d| got.push((off, d.to_vec())));
            assert_eq!(got, vec![(0, hello.clone())]);
            for cut in 0..datagram.len() {
                let _ = open_client_initial(&datagram[..cut], &mut scratch);
            }
        }
    }

    #[test]
    fn reads_gquic_sni() {
        let mut d = vec![0x0d, 1, 2, 3, 4, 5, 6, 7, 8, b'Q', b'0', b'4', b'3', 1];
        d.extend_from_slice(b"CHLO");
        d.extend_from_slice(&2u16.to_le_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(b"PAD\0");
        d.extend_from_slice(&3u32.to_le_bytes());
        d.extend_from_slice(b"SNI\0");
        d.extend_from_slice(&(3 + 14u32).to_le_bytes());
        d.extend_from_slice(b"---www.google.com");
        assert_eq!(gquic_server_name(&d), Some("www.google.com"));
        for cut in 0..d.len() {
            let _ = gquic_server_name(&d[..cut]);
        }
    }
}

/// Builds client Initial packets for tests and fuzz seeds.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Seals `crypto` (at CRYPTO offset `offset`) into a padded client Initial of `version`.
    pub(crate) fn seal_initial(
        version: Version,
        dcid: &[u8],
        crypto: &[u8],
        offset: u64,
    ) -> Vec<u8> {
        let keys = InitialKeys::derive(version, dcid).unwrap();
        let mut frames = vec![0x06];
        push_varint(&mut frames, offset);
        push_varint(&mut frames, crypto.len() as u64);
        frames.extend_from_slice(crypto);
        frames.resize(frames.len().max(1162), 0);
        let wire = match version {
            Version::V1 => 1u32,
            Version::V2 => 0x6b33_43cf,
            Version::Draft29 => 0xff00_001d,
            _ => 0x5430_3531,
        };
        let pn_len = 2;
        let mut header = vec![0xc0 | (version.initial_type() << 4) | (pn_len as u8 - 1)];
        header.extend_from_slice(&wire.to_be_bytes());
        header.push(dcid.len() as u8);
        header.extend_from_slice(dcid);
        header.push(0); // scid
        header.push(0); // token
        push_varint_2(&mut header, (pn_len + frames.len() + 16) as u64);
        let pn_offset = header.len();
        header.extend_from_slice(&[0, 0]); // packet number 0
        let mut payload = frames;
        let nonce = keys.iv;
        keys.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header),
                &mut payload,
            )
            .unwrap();
        let mut packet = header;
        packet.extend_from_slice(&payload);
        let mask = keys
            .hp
            .new_mask(&packet[pn_offset + 4..pn_offset + 20])
            .unwrap();
        packet[0] ^= mask[0] & 0x0f;
        for i in 0..pn_len {
            packet[pn_offset + i] ^= mask[1 + i];
        }
        packet
    }

    fn push_varint(out: &mut Vec<u8>, v: u64) {
        if v < 64 {
            out.push(v as u8);
        } else {
            push_varint_2(out, v);
        }
    }

    fn push_varint_2(out: &mut Vec<u8>, v: u64) {
        assert!(v < 16384);
        out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes());
    }
}
