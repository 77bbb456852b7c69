//! Double SHA-256 and the 32-byte hash type.
//!
//! Bitcoin-family chains treat a hash as a 256-bit *little-endian* integer: byte 0 is the least
//! significant. Block explorers print the bytes reversed. [`Hash256`] stores the internal order and
//! reverses only when displayed or parsed from display form, so the quirk lives in one place.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};
use std::fmt;

/// sha256(sha256(data)), the hash used for block ids, merkle nodes and SHA-256 proof of work.
#[inline]
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    sha256_of_32(&Sha256::digest(data).into())
}

/// Finishes a double SHA-256 whose first pass has been fed already (coinbase midstates).
#[inline]
pub fn sha256d_finish(first_pass: Sha256) -> [u8; 32] {
    sha256_of_32(&first_pass.finalize().into())
}

// Fixed-size double SHA-256 straight on the compression function. The share path hashes only
// 64-byte merkle nodes and 80-byte headers, whose padding is known in advance; skipping the
// streaming `Digest` buffer saves ~10% of a share's validation. `sha2::compress256` still picks
// SHA-NI at run time when the CPU has it.

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A 64-byte block of padding: 0x80, zeros, then the message length in bits (big-endian).
const fn padding_block(message_bits: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0] = 0x80;
    let len = message_bits.to_be_bytes();
    let mut i = 0;
    while i < 8 {
        b[56 + i] = len[i];
        i += 1;
    }
    b
}

#[inline]
fn state_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// SHA-256 of a 32-byte value (the second pass of sha256d): one block, padding fixed.
#[inline]
fn sha256_of_32(digest: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(digest);
    block[32] = 0x80;
    block[56..].copy_from_slice(&256u64.to_be_bytes());
    let mut state = H0;
    sha2::compress256(&mut state, &[GenericArray::from(block)]);
    state_bytes(&state)
}

/// sha256d of exactly 64 bytes, e.g. two merkle nodes side by side.
#[inline]
pub fn sha256d_64(data: &[u8; 64]) -> [u8; 32] {
    const PAD: [u8; 64] = padding_block(512);
    let mut state = H0;
    sha2::compress256(
        &mut state,
        &[GenericArray::from(*data), GenericArray::from(PAD)],
    );
    sha256_of_32(&state_bytes(&state))
}

/// sha256d of exactly 80 bytes: a block header.
#[inline]
pub fn sha256d_80(data: &[u8; 80]) -> [u8; 32] {
    let mut head = [0u8; 64];
    head.copy_from_slice(&data[..64]);
    let mut tail = [0u8; 64];
    tail[..16].copy_from_slice(&data[64..]);
    tail[16] = 0x80;
    tail[56..].copy_from_slice(&640u64.to_be_bytes());
    let mut state = H0;
    sha2::compress256(
        &mut state,
        &[GenericArray::from(head), GenericArray::from(tail)],
    );
    sha256_of_32(&state_bytes(&state))
}

/// A 256-bit hash in internal (little-endian integer) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash256(pub [u8; 32]);

impl Hash256 {
    /// Parses the reversed hex form that explorers and RPCs print (`getblockhash`, `previousblockhash`).
    pub fn from_display_hex(s: &str) -> Result<Self, hex::FromHexError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)?;
        bytes.reverse();
        Ok(Hash256(bytes))
    }

    /// The reversed hex form, as explorers and RPCs print it.
    pub fn to_display_hex(&self) -> String {
        let mut b = self.0;
        b.reverse();
        hex::encode(b)
    }

    /// The hash as four little-endian 64-bit limbs, least significant first.
    #[inline]
    pub fn limbs(&self) -> [u64; 4] {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            *limb = u64::from_le_bytes(w);
        }
        limbs
    }
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display_hex())
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash256({})", self.to_display_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256d_of_empty_input_matches_known_value() {
        // sha256d("") is a widely published constant (e.g. Bitcoin Core's test/crypto_tests.cpp).
        assert_eq!(
            hex::encode(sha256d(b"")),
            "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"
        );
    }

    fn sha256d_streaming(data: &[u8]) -> [u8; 32] {
        Sha256::digest(Sha256::digest(data)).into()
    }

    #[test]
    fn fixed_size_sha256d_agrees_with_streaming_sha256() {
        for seed in 0..64u8 {
            let bytes: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37) ^ seed).collect();
            let b64: [u8; 64] = bytes[..64].try_into().unwrap();
            let b80: [u8; 80] = bytes[..].try_into().unwrap();
            assert_eq!(sha256d_64(&b64), sha256d_streaming(&b64));
            assert_eq!(sha256d_80(&b80), sha256d_streaming(&b80));
            for len in [0, 1, 31, 32, 55, 56, 63, 64, 65, 80] {
                assert_eq!(
                    sha256d(&bytes[..len]),
                    sha256d_streaming(&bytes[..len]),
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn display_hex_round_trips_and_reverses() {
        let h = Hash256::from_display_hex(
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
        )
        .unwrap();
        assert_eq!(h.0[31], 0x00);
        assert_eq!(h.0[0], 0x6f);
        assert_eq!(
            h.to_display_hex(),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
    }
}
