//! Payload compression between Patronus peers, inside the encryption.
//!
//! A compressed packet is `[MARKER, original length, block length, LZ4
//! block]`, the lengths as big-endian u16 (the block length because the
//! encryption pads the plaintext with zeros).
//! The marker's high nibble, 1, is no IP version, so the format cannot be
//! mistaken for a packet, and it only ever travels inside a session: a stock
//! WireGuard peer is never sent one (compression is enabled per peer) and
//! would drop it as not-IP if it were. Packets that LZ4 does not shrink go
//! as they are. Any peer's compressed packets are accepted, so the two ends
//! need not switch it on at the same moment.

use crate::frame::Frame;

/// First byte of a compressed packet (version nibble 1, LZ4 block format 0xc).
pub const MARKER: u8 = 0x1c;
const HEADER: usize = 5;

/// Room a worker keeps for compressing or decompressing one packet: the
/// largest MTU, plus LZ4's worst-case expansion.
pub const SCRATCH_LEN: usize = 16 * 1024;

/// Compresses the packet in `frame` in place when that makes it shorter;
/// returns whether it did. `scratch` must be [`SCRATCH_LEN`] long.
pub fn compress<F: Frame>(frame: &mut F, scratch: &mut [u8]) -> bool {
    let len = frame.len();
    if len < 64 || len > usize::from(u16::MAX) {
        return false; // headers alone: nothing to gain
    }
    let Ok(n) = lz4_flex::block::compress_into(frame.data(), scratch) else {
        return false;
    };
    if n + HEADER >= len {
        return false;
    }
    // Shrinking never needs room the buffer lacks.
    frame.set_len(n + HEADER);
    let out = frame.data_mut();
    out[0] = MARKER;
    out[1..3].copy_from_slice(&(len as u16).to_be_bytes());
    out[3..HEADER].copy_from_slice(&(n as u16).to_be_bytes());
    out[HEADER..].copy_from_slice(&scratch[..n]);
    true
}

/// Why a compressed packet could not be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt;

/// Restores a compressed packet in `frame` in place; `Ok(false)` when it
/// was not compressed. A claimed length above `max_len`, a block that does
/// not decode to exactly that length, or a buffer without room is corrupt.
pub fn decompress<F: Frame>(
    frame: &mut F,
    scratch: &mut [u8],
    max_len: usize,
) -> Result<bool, Corrupt> {
    let data = frame.data();
    if data.first() != Some(&MARKER) {
        return Ok(false);
    }
    if data.len() < HEADER {
        return Err(Corrupt);
    }
    let len = usize::from(u16::from_be_bytes([data[1], data[2]]));
    let block = usize::from(u16::from_be_bytes([data[3], data[4]]));
    if len > max_len || len > scratch.len() || HEADER + block > data.len() {
        return Err(Corrupt);
    }
    let n = lz4_flex::block::decompress_into(&data[HEADER..HEADER + block], &mut scratch[..len])
        .map_err(|_| Corrupt)?;
    if n != len || !frame.set_len(len) {
        return Err(Corrupt);
    }
    frame.data_mut().copy_from_slice(&scratch[..len]);
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::VecFrame;

    /// Bytes with no structure LZ4 could use (xorshift64).
    pub(crate) fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    fn packet(compressible: bool) -> Vec<u8> {
        let mut p = vec![0x45, 0, 5, 0xdc];
        if compressible {
            p.extend((0..1496usize).map(|i| b"GET /index.html HTTP/1.1\r\n"[i % 26]));
        } else {
            p.extend(noise(1496));
        }
        p
    }

    #[test]
    fn compressible_packets_shrink_and_come_back_identical() {
        let mut scratch = vec![0; SCRATCH_LEN];
        let original = packet(true);
        let mut frame = VecFrame::new(&original);
        assert!(compress(&mut frame, &mut scratch));
        assert!(frame.len() < original.len() / 4, "{} bytes", frame.len());
        assert_eq!(frame.data()[0], MARKER);
        // The encryption pads with zeros; they are not part of the block.
        let len = frame.len();
        frame.set_len(len.next_multiple_of(16) + 16);
        frame.data_mut()[len..].fill(0);
        assert_eq!(decompress(&mut frame, &mut scratch, 1500), Ok(true));
        assert_eq!(frame.data(), &original[..]);
    }

    #[test]
    fn incompressible_and_small_packets_go_unchanged() {
        let mut scratch = vec![0; SCRATCH_LEN];
        for original in [packet(false), vec![0x45; 40]] {
            let mut frame = VecFrame::new(&original);
            assert!(!compress(&mut frame, &mut scratch));
            assert_eq!(frame.data(), &original[..]);
            assert_eq!(
                decompress(&mut frame, &mut scratch, 1500),
                Ok(false),
                "an IP packet is left alone"
            );
        }
    }

    #[test]
    fn lies_about_the_length_and_garbage_blocks_are_corrupt() {
        let mut scratch = vec![0; SCRATCH_LEN];
        let mut frame = VecFrame::new(&packet(true));
        compress(&mut frame, &mut scratch);
        let good = frame.clone();
        assert_eq!(
            decompress(&mut frame.clone(), &mut scratch, 1000),
            Err(Corrupt),
            "over the MTU"
        );
        let mut longer = good.clone();
        longer.data_mut()[2] = longer.data()[2].wrapping_add(1);
        assert_eq!(decompress(&mut longer, &mut scratch, 1500), Err(Corrupt));
        for garbage in [
            &[MARKER][..],
            &[MARKER, 0, 50, 0],
            &[MARKER, 0, 50, 0, 3, 0xff, 0xff, 0xff],
            &[MARKER, 0, 50, 0, 9, 0xff],
        ] {
            assert_eq!(
                decompress(&mut VecFrame::new(garbage), &mut scratch, 1500),
                Err(Corrupt)
            );
        }
    }
}
