//! Targets, difficulties and the compact `nBits` encoding.
//!
//! A share or block is valid when its proof-of-work hash, read as a 256-bit little-endian
//! integer, is less than or equal to a *target*. Pools talk in *difficulty* instead: how many
//! times harder than "difficulty 1" a target is, `target = diff1 / difficulty`. The value of
//! difficulty 1 is a convention of the algorithm's pools: SHA-256 pools use
//! `0x00000000ffff0000…` (Bitcoin's genesis target), scrypt pools use a target 65536 times larger
//! (`0x0000ffff0000…`), so that the same hardware shows sensible numbers. Blocks encode their
//! target in 32 bits as `nBits` (Bitcoin Core `arith_uint256::SetCompact`).

use crate::hash::Hash256;
use std::cmp::Ordering;
use std::fmt;

/// A 256-bit proof-of-work target. The rule: a hash meets the target when `hash <= target`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Little-endian limbs, least significant first.
    limbs: [u64; 4],
}

/// A pool difficulty: `diff1_target / target`. Fractional values are legal (CPU miners, regtest).
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug, Default)]
pub struct Difficulty(f64);

/// The compact `nBits` form of a target found in block headers and `getblocktemplate`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CompactTarget(pub u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("nBits {0:#010x} encodes a negative target")]
    NegativeCompact(u32),
    #[error("nBits {0:#010x} overflows 256 bits")]
    OverflowingCompact(u32),
    #[error("difficulty {0} is not a positive finite number")]
    BadDifficulty(String),
}

impl Difficulty {
    /// A difficulty from a pool-facing number; rejects zero, negatives, NaN and infinity.
    pub fn new(value: f64) -> Result<Self, TargetError> {
        if value.is_finite() && value > 0.0 {
            Ok(Difficulty(value))
        } else {
            Err(TargetError::BadDifficulty(value.to_string()))
        }
    }

    pub fn value(self) -> f64 {
        self.0
    }

    /// Clamps into `[min, max]`.
    pub fn clamp(self, min: Difficulty, max: Difficulty) -> Difficulty {
        Difficulty(self.0.clamp(min.0, max.0))
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Target {
    pub const ZERO: Target = Target { limbs: [0; 4] };
    pub const MAX: Target = Target {
        limbs: [u64::MAX; 4],
    };

    /// Difficulty 1 of SHA-256 pools: `0xffff << 208` (Bitcoin's genesis nBits 0x1d00ffff).
    pub const SHA256_DIFF1: Target = Target {
        limbs: [0, 0, 0, 0x0000_0000_ffff_0000],
    };

    /// Difficulty 1 of scrypt pools: 65536 times the SHA-256 one, `0xffff << 224`.
    pub const SCRYPT_DIFF1: Target = Target {
        limbs: [0, 0, 0, 0x0000_ffff_0000_0000],
    };

    pub fn from_limbs(limbs: [u64; 4]) -> Self {
        Target { limbs }
    }

    /// From 32 bytes in little-endian integer order (the order of a hash).
    pub fn from_le_bytes(bytes: [u8; 32]) -> Self {
        Target {
            limbs: Hash256(bytes).limbs(),
        }
    }

    pub fn to_le_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.limbs.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Big-endian hex, the way `getblocktemplate` prints its `target` field.
    pub fn from_be_hex(s: &str) -> Result<Self, hex::FromHexError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)?;
        bytes.reverse();
        Ok(Self::from_le_bytes(bytes))
    }

    pub fn to_be_hex(self) -> String {
        let mut b = self.to_le_bytes();
        b.reverse();
        hex::encode(b)
    }

    /// The proof-of-work rule: the hash, as a little-endian integer, must not exceed the target.
    #[inline]
    pub fn is_met_by(&self, hash: &Hash256) -> bool {
        let h = hash.limbs();
        for i in (0..4).rev() {
            match h[i].cmp(&self.limbs[i]) {
                Ordering::Less => return true,
                Ordering::Greater => return false,
                Ordering::Equal => {}
            }
        }
        true
    }

    /// Decodes `nBits` exactly as Bitcoin Core's `SetCompact`, refusing negative or overflowing
    /// encodings, which no valid block can carry.
    pub fn from_compact(bits: CompactTarget) -> Result<Self, TargetError> {
        let raw = bits.0;
        let size = raw >> 24;
        let mut word = raw & 0x007f_ffff;
        let negative = word != 0 && (raw & 0x0080_0000) != 0;
        let overflow =
            word != 0 && (size > 34 || (word > 0xff && size > 33) || (word > 0xffff && size > 32));
        if negative {
            return Err(TargetError::NegativeCompact(raw));
        }
        if overflow {
            return Err(TargetError::OverflowingCompact(raw));
        }
        if size <= 3 {
            word >>= 8 * (3 - size);
            Ok(Target::from_limbs([word as u64, 0, 0, 0]))
        } else {
            Ok(Target::from_limbs([word as u64, 0, 0, 0]).shl(8 * (size - 3)))
        }
    }

    /// Encodes as `nBits` (Bitcoin Core `GetCompact`); lossy: only the top 23 bits survive.
    pub fn to_compact_lossy(self) -> CompactTarget {
        let bits = self.bits();
        let mut size = bits.div_ceil(8);
        let mut compact: u32 = if size <= 3 {
            (self.limbs[0] << (8 * (3 - size))) as u32
        } else {
            self.shr(8 * (size - 3)).limbs[0] as u32
        };
        if compact & 0x0080_0000 != 0 {
            compact >>= 8;
            size += 1;
        }
        CompactTarget(compact | (size << 24))
    }

    /// The target for `difficulty` under the given difficulty-1 convention, saturating at
    /// [`Target::MAX`] for tiny difficulties. Exact division of the 256-bit `diff1` by the
    /// difficulty's binary mantissa, so two pools computing it agree to the last bit.
    pub fn from_difficulty(difficulty: Difficulty, diff1: Target) -> Target {
        let d = difficulty.0;
        // d = mantissa * 2^exp with a 53-bit integer mantissa.
        let bits = d.to_bits();
        let raw_exp = ((bits >> 52) & 0x7ff) as i32;
        let (mantissa, exp) = if raw_exp == 0 {
            (bits & ((1 << 52) - 1), -1074)
        } else {
            ((bits & ((1 << 52) - 1)) | (1 << 52), raw_exp - 1075)
        };
        if mantissa == 0 {
            return Target::MAX;
        }
        // target = diff1 / (mantissa * 2^exp) = (diff1 * 2^-exp) / mantissa
        let mut wide = [0u64; 8];
        wide[..4].copy_from_slice(&diff1.limbs);
        if exp <= 0 {
            let shift = (-exp) as u32;
            if shift >= 256 + 64 {
                return Target::MAX;
            }
            wide = shl_wide(wide, shift);
            let q = div_wide(wide, mantissa);
            if q[4..].iter().any(|&l| l != 0) {
                return Target::MAX;
            }
            Target::from_limbs([q[0], q[1], q[2], q[3]])
        } else {
            let q = div_wide(wide, mantissa);
            let t = Target::from_limbs([q[0], q[1], q[2], q[3]]);
            let shift = exp as u32;
            if shift >= 256 {
                Target::ZERO
            } else {
                t.shr(shift)
            }
        }
    }

    /// The difficulty this target represents under `diff1` (approximate: an `f64`).
    pub fn to_difficulty(self, diff1: Target) -> Difficulty {
        let t = self.to_f64();
        if t == 0.0 {
            return Difficulty(f64::MAX);
        }
        Difficulty(diff1.to_f64() / t)
    }

    pub fn to_f64(self) -> f64 {
        self.limbs
            .iter()
            .rev()
            .fold(0.0, |acc, &l| acc * 18446744073709551616.0 + l as f64)
    }

    /// Number of significant bits.
    fn bits(&self) -> u32 {
        for i in (0..4).rev() {
            if self.limbs[i] != 0 {
                return 64 * i as u32 + (64 - self.limbs[i].leading_zeros());
            }
        }
        0
    }

    fn shl(self, n: u32) -> Target {
        let w = shl_wide(
            [
                self.limbs[0],
                self.limbs[1],
                self.limbs[2],
                self.limbs[3],
                0,
                0,
                0,
                0,
            ],
            n,
        );
        Target::from_limbs([w[0], w[1], w[2], w[3]])
    }

    fn shr(self, n: u32) -> Target {
        let mut out = [0u64; 4];
        let limb_shift = (n / 64) as usize;
        let bit_shift = n % 64;
        for (i, slot) in out.iter_mut().enumerate() {
            let src = i + limb_shift;
            if src < 4 {
                let mut v = self.limbs[src] >> bit_shift;
                if bit_shift != 0 && src + 1 < 4 {
                    v |= self.limbs[src + 1] << (64 - bit_shift);
                }
                *slot = v;
            }
        }
        Target::from_limbs(out)
    }
}

impl PartialOrd for Target {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Target {
    fn cmp(&self, other: &Self) -> Ordering {
        for i in (0..4).rev() {
            match self.limbs[i].cmp(&other.limbs[i]) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.to_be_hex())
    }
}

fn shl_wide(v: [u64; 8], n: u32) -> [u64; 8] {
    let mut out = [0u64; 8];
    let limb_shift = (n / 64) as usize;
    let bit_shift = n % 64;
    for i in (0..8).rev() {
        if i < limb_shift {
            break;
        }
        let src = i - limb_shift;
        let mut x = v[src] << bit_shift;
        if bit_shift != 0 && src > 0 {
            x |= v[src - 1] >> (64 - bit_shift);
        }
        out[i] = x;
    }
    out
}

fn div_wide(v: [u64; 8], d: u64) -> [u64; 8] {
    let mut out = [0u64; 8];
    let mut rem: u128 = 0;
    for i in (0..8).rev() {
        let cur = (rem << 64) | v[i] as u128;
        out[i] = (cur / d as u128) as u64;
        rem = cur % d as u128;
    }
    out
}

/// The difficulty a hash actually achieved, for statistics and best-share tracking.
pub fn hash_difficulty(hash: &Hash256, diff1: Target) -> f64 {
    Target::from_le_bytes(hash.0).to_difficulty(diff1).value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_nbits_decodes_to_sha256_diff1() {
        // Bitcoin genesis block nBits 0x1d00ffff (Bitcoin Core chainparams.cpp).
        let t = Target::from_compact(CompactTarget(0x1d00ffff)).unwrap();
        assert_eq!(t, Target::SHA256_DIFF1);
        assert_eq!(t.to_compact_lossy(), CompactTarget(0x1d00ffff));
    }

    #[test]
    fn litecoin_genesis_nbits_round_trips() {
        // Litecoin genesis nBits 0x1e0ffff0 (Litecoin Core chainparams.cpp).
        let t = Target::from_compact(CompactTarget(0x1e0ffff0)).unwrap();
        assert_eq!(
            t.to_be_hex(),
            "00000ffff0000000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(t.to_compact_lossy(), CompactTarget(0x1e0ffff0));
    }

    #[test]
    fn regtest_nbits_decodes() {
        // Regtest powLimit 0x207fffff.
        let t = Target::from_compact(CompactTarget(0x207fffff)).unwrap();
        assert_eq!(
            t.to_be_hex(),
            "7fffff0000000000000000000000000000000000000000000000000000000000"
        );
    }

    #[test]
    fn compact_edge_cases_follow_bitcoin_core() {
        // Cases from Bitcoin Core src/test/arith_uint256_tests.cpp (bignum_SetCompact).
        assert_eq!(
            Target::from_compact(CompactTarget(0)).unwrap(),
            Target::ZERO
        );
        assert_eq!(
            Target::from_compact(CompactTarget(0x00123456)).unwrap(),
            Target::ZERO
        );
        assert_eq!(
            Target::from_compact(CompactTarget(0x01123456))
                .unwrap()
                .to_f64(),
            0x12 as f64
        );
        assert_eq!(
            Target::from_compact(CompactTarget(0x04923456)),
            Err(TargetError::NegativeCompact(0x04923456))
        );
        assert_eq!(
            Target::from_compact(CompactTarget(0x05009234))
                .unwrap()
                .to_f64(),
            0x92340000u32 as f64
        );
        assert_eq!(
            Target::from_compact(CompactTarget(0xff123456)),
            Err(TargetError::OverflowingCompact(0xff123456))
        );
        let t = Target::from_compact(CompactTarget(0x20123456)).unwrap();
        assert_eq!(t.to_compact_lossy(), CompactTarget(0x20123456));
    }

    #[test]
    fn difficulty_one_is_diff1_and_powers_of_two_divide_exactly() {
        let d1 = Target::from_difficulty(Difficulty::new(1.0).unwrap(), Target::SHA256_DIFF1);
        assert_eq!(d1, Target::SHA256_DIFF1);
        let d2 = Target::from_difficulty(Difficulty::new(2.0).unwrap(), Target::SHA256_DIFF1);
        assert_eq!(d2, Target::from_limbs([0, 0, 0, 0x7fff_8000]));
        let half = Target::from_difficulty(Difficulty::new(0.5).unwrap(), Target::SHA256_DIFF1);
        assert_eq!(half, Target::from_limbs([0, 0, 0, 0x1_fffe_0000]));
    }

    #[test]
    fn scrypt_diff1_is_65536_times_sha256_diff1() {
        let scaled = Target::from_difficulty(
            Difficulty::new(1.0 / 65536.0).unwrap(),
            Target::SHA256_DIFF1,
        );
        assert_eq!(scaled, Target::SCRYPT_DIFF1);
    }

    #[test]
    fn tiny_difficulty_saturates_and_huge_one_shrinks() {
        let t = Target::from_difficulty(Difficulty::new(1e-30).unwrap(), Target::SCRYPT_DIFF1);
        assert_eq!(t, Target::MAX);
        let t = Target::from_difficulty(Difficulty::new(1e12).unwrap(), Target::SHA256_DIFF1);
        let back = t.to_difficulty(Target::SHA256_DIFF1).value();
        assert!((back - 1e12).abs() / 1e12 < 1e-9);
    }

    #[test]
    fn odd_difficulty_round_trips_closely() {
        for d in [3.0, 1000.0, 65536.0, 0.001, 12345.678] {
            let t = Target::from_difficulty(Difficulty::new(d).unwrap(), Target::SCRYPT_DIFF1);
            let back = t.to_difficulty(Target::SCRYPT_DIFF1).value();
            assert!((back - d).abs() / d < 1e-9, "{d} -> {back}");
        }
    }

    #[test]
    fn bad_difficulties_are_refused() {
        assert!(Difficulty::new(0.0).is_err());
        assert!(Difficulty::new(-1.0).is_err());
        assert!(Difficulty::new(f64::NAN).is_err());
        assert!(Difficulty::new(f64::INFINITY).is_err());
    }

    #[test]
    fn is_met_by_is_inclusive() {
        let t = Target::SHA256_DIFF1;
        assert!(t.is_met_by(&Hash256(t.to_le_bytes())));
        let mut above = t.to_le_bytes();
        above[0] = 1;
        assert!(!t.is_met_by(&Hash256(above)));
    }
}
