//! Extranonces and the hierarchy that keeps every miner's work distinct.
//!
//! Two miners hashing the same job with the same extranonce would search the same space and find
//! the same shares: wasted work, and duplicate credit. Quarry makes the *extranonce1* each miner
//! receives unique across the whole pool by assigning it top down:
//!
//! ```text
//! extranonce1 = [upstream prefix] ‖ shard byte ‖ edge lease ‖ miner slot
//! ```
//!
//! The core gives each shard a byte, each shard leases each connected edge a prefix, and the edge
//! gives each miner connection a slot under its lease. The miner fills `extranonce2` itself.
//! In proxy mining the upstream pool's own extranonce1 comes first and everything of ours is
//! carved out of the extranonce2 space the upstream leaves ([`UpstreamCarve`]). The upstream's
//! extranonce1 (and any spare bytes) are folded into the coinb1 of the jobs we hand on, not into
//! the extranonce1 our miners see: when the upstream changes it (`mining.set_extranonce`, a
//! failover to another pool) only the jobs change, and no miner has to reconnect.

use std::fmt;

/// Longest extranonce we carry inline (upstream pools use at most 8 bytes in practice).
pub const MAX_EXTRANONCE_LEN: usize = 16;

/// A short byte string used as extranonce1 or extranonce2; `Copy`, no heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Extranonce {
    len: u8,
    bytes: [u8; MAX_EXTRANONCE_LEN],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtranonceError {
    #[error("extranonce of {0} bytes is longer than the {MAX_EXTRANONCE_LEN} supported")]
    TooLong(usize),
    #[error("extranonce is not hex: {0}")]
    NotHex(String),
    #[error(
        "extranonce space too small: upstream extranonce2_size is {available} bytes, Quarry needs {needed} \
         ({prefix} bytes of shard/edge/miner prefix plus {min_miner} bytes of miner extranonce2)"
    )]
    NoRoom {
        available: usize,
        needed: usize,
        prefix: usize,
        min_miner: usize,
    },
    #[error("slot {slot} does not fit in {len} bytes")]
    SlotOverflow { slot: u64, len: usize },
}

impl Extranonce {
    pub fn from_slice(b: &[u8]) -> Result<Self, ExtranonceError> {
        if b.len() > MAX_EXTRANONCE_LEN {
            return Err(ExtranonceError::TooLong(b.len()));
        }
        let mut bytes = [0u8; MAX_EXTRANONCE_LEN];
        bytes[..b.len()].copy_from_slice(b);
        Ok(Extranonce {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn from_hex(s: &str) -> Result<Self, ExtranonceError> {
        if s.len() / 2 > MAX_EXTRANONCE_LEN {
            return Err(ExtranonceError::TooLong(s.len() / 2));
        }
        let mut bytes = [0u8; MAX_EXTRANONCE_LEN];
        let n = s.len() / 2;
        // Every share carries an extranonce2: decode directly, and let the hex crate describe
        // what is wrong only when something is.
        if !decode_hex_pairs(s.as_bytes(), &mut bytes[..n]) {
            hex::decode_to_slice(s, &mut bytes[..n])
                .map_err(|e| ExtranonceError::NotHex(format!("'{s}': {e}")))?;
        }
        Ok(Extranonce {
            len: n as u8,
            bytes,
        })
    }

    /// A big-endian counter value written into `len` bytes (extranonce2 generation in miners).
    pub fn from_counter(value: u64, len: usize) -> Result<Self, ExtranonceError> {
        if len > MAX_EXTRANONCE_LEN {
            return Err(ExtranonceError::TooLong(len));
        }
        if len < 8 && value >> (8 * len) != 0 {
            return Err(ExtranonceError::SlotOverflow { slot: value, len });
        }
        let mut bytes = [0u8; MAX_EXTRANONCE_LEN];
        let be = value.to_be_bytes();
        for i in 0..len.min(8) {
            bytes[len - 1 - i] = be[7 - i];
        }
        Ok(Extranonce {
            len: len as u8,
            bytes,
        })
    }

    /// Concatenation, for building an extranonce1 out of its parts.
    pub fn concat(&self, tail: &Extranonce) -> Result<Self, ExtranonceError> {
        let n = self.len() + tail.len();
        if n > MAX_EXTRANONCE_LEN {
            return Err(ExtranonceError::TooLong(n));
        }
        let mut out = *self;
        out.bytes[self.len()..n].copy_from_slice(tail.as_bytes());
        out.len = n as u8;
        Ok(out)
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

/// Decodes `hex` (either case) into `out`; false, leaving `out` unspecified, unless `hex` is
/// exactly `2 * out.len()` hex digits.
#[inline]
fn decode_hex_pairs(hex: &[u8], out: &mut [u8]) -> bool {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * out.len() {
        return false;
    }
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
            _ => return false,
        }
    }
    true
}

impl fmt::Debug for Extranonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extranonce({})", self.to_hex())
    }
}

impl fmt::Display for Extranonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// How the coinbase's extranonce space is divided. Default: 8 bytes in all; extranonce1 =
/// shard (1) ‖ edge lease (1) ‖ miner slot (2), leaving the miner 4 bytes of extranonce2 —
/// 256 shards × 256 edges per shard × 65,536 connections per edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtranonceLayout {
    pub shard_len: usize,
    pub lease_len: usize,
    pub slot_len: usize,
    pub extranonce2_len: usize,
}

/// Where Quarry's extranonce space sits inside an upstream pool's, in proxy mining.
///
/// The upstream builds its coinbase as `coinb1 ‖ upstream extranonce1 ‖ upstream extranonce2 ‖
/// coinb2`. Ours is `coinb1' ‖ miner extranonce1 ‖ miner extranonce2 ‖ coinb2` with
/// `coinb1' = coinb1 ‖ upstream extranonce1 ‖ pad` (pad: zero bytes the upstream's extranonce2
/// has beyond what we need), so both are the same bytes when the upstream extranonce2 we submit
/// is `pad ‖ miner extranonce1 ‖ miner extranonce2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamCarve {
    pub upstream_extranonce1: Extranonce,
    /// Zero bytes between the upstream's extranonce1 and our miners' extranonce1.
    pub pad: usize,
}

impl UpstreamCarve {
    /// What goes after the upstream's coinb1 in the jobs we hand on.
    pub fn coinb1_suffix(&self) -> Vec<u8> {
        let mut v = self.upstream_extranonce1.as_bytes().to_vec();
        v.resize(v.len() + self.pad, 0);
        v
    }

    /// The extranonce2 to submit upstream for a share of one of our miners.
    pub fn upstream_extranonce2(
        &self,
        miner_extranonce1: &Extranonce,
        miner_extranonce2: &Extranonce,
    ) -> Result<Extranonce, ExtranonceError> {
        Extranonce::from_slice(&[0u8; MAX_EXTRANONCE_LEN][..self.pad])?
            .concat(miner_extranonce1)?
            .concat(miner_extranonce2)
    }
}

/// Miners need at least this much extranonce2 (2^32 coinbases per job at full rate is plenty
/// with ntime and version rolling; fewer bytes risk running out on fast ASICs).
pub const MIN_MINER_EXTRANONCE2: usize = 2;

impl Default for ExtranonceLayout {
    fn default() -> Self {
        ExtranonceLayout {
            shard_len: 1,
            lease_len: 1,
            slot_len: 2,
            extranonce2_len: 4,
        }
    }
}

impl ExtranonceLayout {
    /// Fits this layout under an upstream pool that gave us `upstream_extranonce1` and leaves
    /// `upstream_extranonce2_size` bytes: all of our extranonce space (prefix and the miners'
    /// extranonce2) must fit in the upstream's extranonce2; spare bytes become zero padding.
    pub fn carve_under(
        &self,
        upstream_extranonce1: Extranonce,
        upstream_extranonce2_size: usize,
    ) -> Result<UpstreamCarve, ExtranonceError> {
        let prefix = self.extranonce1_len();
        let needed = self.total_len();
        if upstream_extranonce2_size < needed {
            return Err(ExtranonceError::NoRoom {
                available: upstream_extranonce2_size,
                needed,
                prefix,
                min_miner: self.extranonce2_len,
            });
        }
        Ok(UpstreamCarve {
            upstream_extranonce1,
            pad: upstream_extranonce2_size - needed,
        })
    }

    /// Length of the extranonce1 a miner sees.
    pub fn extranonce1_len(&self) -> usize {
        self.shard_len + self.lease_len + self.slot_len
    }

    /// Total bytes between coinb1 and coinb2.
    pub fn total_len(&self) -> usize {
        self.extranonce1_len() + self.extranonce2_len
    }

    /// The prefix the core leases an edge: upstream prefix ‖ shard ‖ lease.
    pub fn edge_prefix(&self, shard: u64, lease: u64) -> Result<Extranonce, ExtranonceError> {
        Extranonce::from_counter(shard, self.shard_len)?
            .concat(&Extranonce::from_counter(lease, self.lease_len)?)
    }

    /// A miner's full extranonce1 under an edge prefix.
    pub fn miner_extranonce1(
        &self,
        edge_prefix: &Extranonce,
        slot: u64,
    ) -> Result<Extranonce, ExtranonceError> {
        edge_prefix.concat(&Extranonce::from_counter(slot, self.slot_len)?)
    }

    /// How many miner slots one edge lease holds.
    pub fn slots_per_lease(&self) -> u64 {
        if self.slot_len >= 8 {
            u64::MAX
        } else {
            1u64 << (8 * self.slot_len)
        }
    }

    pub fn leases_per_shard(&self) -> u64 {
        if self.lease_len >= 8 {
            u64::MAX
        } else {
            1u64 << (8 * self.lease_len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_shard_lease_slot_triple_gives_a_distinct_extranonce1() {
        let layout = ExtranonceLayout {
            slot_len: 1,
            ..Default::default()
        };
        let mut seen = HashSet::new();
        for shard in 0..4 {
            for lease in 0..16 {
                let prefix = layout.edge_prefix(shard, lease).unwrap();
                for slot in 0..256 {
                    let e1 = layout.miner_extranonce1(&prefix, slot).unwrap();
                    assert_eq!(e1.len(), layout.extranonce1_len());
                    assert!(seen.insert(e1), "duplicate extranonce1 {e1}");
                }
            }
        }
        assert_eq!(seen.len(), 4 * 16 * 256);
    }

    #[test]
    fn default_layout_is_eight_bytes_with_four_for_the_miner() {
        let l = ExtranonceLayout::default();
        assert_eq!(l.extranonce1_len(), 4);
        assert_eq!(l.extranonce2_len, 4);
        assert_eq!(l.total_len(), 8);
        let e1 = l
            .miner_extranonce1(&l.edge_prefix(2, 7).unwrap(), 0x0102)
            .unwrap();
        assert_eq!(e1.to_hex(), "02070102");
    }

    #[test]
    fn slot_overflow_is_an_error() {
        let l = ExtranonceLayout::default();
        let p = l.edge_prefix(0, 0).unwrap();
        assert!(matches!(
            l.miner_extranonce1(&p, 65536),
            Err(ExtranonceError::SlotOverflow { .. })
        ));
    }

    #[test]
    fn carving_under_an_upstream_names_the_sizes_and_rebuilds_the_same_coinbase() {
        let layout = ExtranonceLayout::default();
        let up_e1 = Extranonce::from_hex("aabbccdd").unwrap();
        let msg = layout.carve_under(up_e1, 6).unwrap_err().to_string();
        assert!(msg.contains("extranonce2_size is 6 bytes"), "{msg}");
        assert!(msg.contains("needs 8"), "{msg}");
        let carve = layout.carve_under(up_e1, 10).unwrap();
        assert_eq!(carve.pad, 2);
        assert_eq!(hex::encode(carve.coinb1_suffix()), "aabbccdd0000");
        let e1 = layout
            .miner_extranonce1(&layout.edge_prefix(1, 2).unwrap(), 3)
            .unwrap();
        let e2 = Extranonce::from_hex("01020304").unwrap();
        let up_e2 = carve.upstream_extranonce2(&e1, &e2).unwrap();
        assert_eq!(up_e2.to_hex(), "00000102000301020304");
        // coinb1 ‖ up_e1 ‖ up_e2 == coinb1' ‖ e1 ‖ e2, byte for byte.
        let theirs = [up_e1.as_bytes(), up_e2.as_bytes()].concat();
        let ours = [&carve.coinb1_suffix()[..], e1.as_bytes(), e2.as_bytes()].concat();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn hex_parsing_rejects_junk() {
        assert!(Extranonce::from_hex("zz").is_err());
        assert!(Extranonce::from_hex("abc").is_err());
        assert_eq!(
            Extranonce::from_hex("ABcd").unwrap().as_bytes(),
            &[0xab, 0xcd]
        );
    }
}
