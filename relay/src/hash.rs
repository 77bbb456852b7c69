//! Double SHA-256 and the 32-byte hash type.
//!
//! Bitcoin-family chains treat a hash as a 256-bit *little-endian* integer: byte 0 is the least
//! significant. Block explorers print the bytes reversed. [`Hash256`] stores the internal order and
//! reverses only when displayed or parsed from display form, so the quirk lives in one place.

use sha2::{Digest, Sha256};
use std::fmt;

/// sha256(sha256(data)), the hash used for block ids, merkle nodes and SHA-256 proof of work.
#[inline]
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// Finishes a double SHA-256 whose first pass has been fed already (coinbase midstates).
#[inline]
pub fn sha256d_finish(first_pass: Sha256) -> [u8; 32] {
    Sha256::digest(first_pass.finalize()).into()
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
