//! Checked primitive reads and writes shared by every wire message, and the error they report.
//!
//! Every read names the field it is reading, so a decoder that meets a short or hostile input
//! says *which* field was cut or out of bounds (`batch.records[3].extranonce2: needs 4 bytes,
//! 2 left`). Nothing here indexes a slice without checking its length first: decoders built on
//! [`Reader`] cannot panic on any input.

use bytes::BufMut;

/// What was wrong with a wire message. `what` names the field, as `message.field`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{what}: needs {needed} bytes, {remaining} left")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("{what}: {len} is over the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {len} is under the minimum of {min}")]
    TooSmall {
        what: &'static str,
        len: usize,
        min: usize,
    },
    #[error("{what}: varint is longer than 10 bytes or overflows 64 bits")]
    VarintOverflow { what: &'static str },
    #[error("{what}: varint is not in its shortest form")]
    VarintNotMinimal { what: &'static str },
    #[error("{what}: value {value} does not fit in {bits} bits")]
    OutOfRange {
        what: &'static str,
        value: i128,
        bits: u32,
    },
    #[error("{what}: not valid UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{what}: {value} is not a boolean (0 or 1)")]
    NotBool { what: &'static str, value: u8 },
    #[error("{what}: {value} is not an option tag (0 or 1)")]
    NotOptionTag { what: &'static str, value: u8 },
    #[error("{what}: index {index} is outside a table of {len}")]
    IndexOutOfRange {
        what: &'static str,
        index: u64,
        len: u64,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("unknown control frame type {0:#04x}")]
    UnknownFrameType(u8),
    #[error("unknown stream kind {0:#04x}")]
    UnknownStreamKind(u8),
    #[error("{what}: expected stream kind {expected:#04x}, found {found:#04x}")]
    WrongStreamKind {
        what: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("{what}: {extra} unread bytes after the end of the message")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("batch record {index}: {source}")]
    Record {
        index: usize,
        #[source]
        source: Box<WireError>,
    },
}

impl WireError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        WireError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn in_record(self, index: usize) -> Self {
        WireError::Record {
            index,
            source: Box::new(self),
        }
    }
}

/// A cursor over a received message. Every method checks the remaining length first.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The message must be fully consumed: trailing bytes mean the sender and we disagree on the
    /// layout, and silently ignoring them would hide that.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes { what, extra }),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(WireError::Truncated {
                what,
                needed: n,
                remaining,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn f64(&mut self, what: &'static str) -> Result<f64, WireError> {
        Ok(f64::from_bits(self.u64(what)?))
    }

    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::NotBool { what, value }),
        }
    }

    /// An option tag: 0 = absent, 1 = present.
    pub(crate) fn option_tag(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::NotOptionTag { what, value }),
        }
    }

    /// LEB128 unsigned varint, shortest form only, so every value has exactly one encoding (a
    /// decoded message re-encodes to the same bytes, which the fuzzers and proptests rely on).
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(WireError::VarintOverflow { what });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(WireError::VarintNotMinimal { what });
                }
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow { what })
    }

    /// A varint that must not exceed `max` (counts and table indexes).
    pub(crate) fn varint_max(&mut self, max: u64, what: &'static str) -> Result<u64, WireError> {
        let v = self.varint(what)?;
        if v > max {
            return Err(WireError::TooLarge {
                what,
                len: usize::try_from(v).unwrap_or(usize::MAX),
                max: usize::try_from(max).unwrap_or(usize::MAX),
            });
        }
        Ok(v)
    }

    /// A zigzag-encoded signed varint.
    pub(crate) fn zigzag(&mut self, what: &'static str) -> Result<i64, WireError> {
        let v = self.varint(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count whose elements each take at least `min_elem_bytes`: refusing counts that cannot
    /// fit in what is left stops a 5-byte message from asking for a huge allocation.
    pub(crate) fn count(
        &mut self,
        max: usize,
        min_elem_bytes: usize,
        what: &'static str,
    ) -> Result<usize, WireError> {
        let n = self.varint_max(max as u64, what)? as usize;
        let needed = n.saturating_mul(min_elem_bytes);
        if needed > self.remaining() {
            return Err(WireError::Truncated {
                what,
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(n)
    }

    /// Bytes preceded by a varint length of at most `max`.
    pub(crate) fn var_bytes(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], WireError> {
        let n = self.varint_max(max as u64, what)? as usize;
        self.bytes(n, what)
    }

    /// A UTF-8 string preceded by a varint length of at most `max` bytes.
    pub(crate) fn string(&mut self, max: usize, what: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.var_bytes(max, what)?).map_err(|_| WireError::NotUtf8 { what })
    }
}

/// Writes an unsigned LEB128 varint.
pub(crate) fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Bytes a varint of `v` takes.
pub(crate) fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes a zigzag-encoded signed varint: small magnitudes of either sign stay small.
pub(crate) fn put_zigzag(buf: &mut impl BufMut, v: i64) {
    put_varint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Writes a length-prefixed byte string, refusing (rather than truncating) one over `max`.
pub(crate) fn put_var_bytes(
    buf: &mut impl BufMut,
    bytes: &[u8],
    max: usize,
    what: &'static str,
) -> Result<(), WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: u64) {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(buf.len(), varint_len(v), "{v}");
        let mut r = Reader::new(&buf);
        assert_eq!(r.varint("v").unwrap(), v);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn varint_roundtrips_edges_of_every_width() {
        for shift in 0..64 {
            let v = 1u64 << shift;
            roundtrip(v - 1);
            roundtrip(v);
            roundtrip(v + 1);
        }
        roundtrip(u64::MAX);
    }

    #[test]
    fn overlong_and_overflowing_varints_are_refused() {
        assert_eq!(
            Reader::new(&[0x80, 0x00]).varint("x"),
            Err(WireError::VarintNotMinimal { what: "x" })
        );
        let mut eleven = [0xffu8; 11];
        eleven[10] = 0;
        assert_eq!(
            Reader::new(&eleven).varint("x"),
            Err(WireError::VarintOverflow { what: "x" })
        );
        let mut over = [0xffu8; 10];
        over[9] = 0x02;
        assert_eq!(
            Reader::new(&over).varint("x"),
            Err(WireError::VarintOverflow { what: "x" })
        );
    }

    #[test]
    fn zigzag_keeps_small_negatives_small() {
        for v in [0i64, -1, 1, -64, 63, i64::MIN, i64::MAX] {
            let mut buf = Vec::new();
            put_zigzag(&mut buf, v);
            assert_eq!(Reader::new(&buf).zigzag("z").unwrap(), v);
        }
        let mut buf = Vec::new();
        put_zigzag(&mut buf, -3);
        assert_eq!(buf.len(), 1);
    }

    #[test]
    fn a_count_larger_than_the_remaining_bytes_is_refused_before_allocating() {
        let mut buf = Vec::new();
        put_varint(&mut buf, 60_000);
        let err = Reader::new(&buf).count(65_535, 4, "records").unwrap_err();
        assert!(matches!(
            err,
            WireError::Truncated {
                what: "records",
                ..
            }
        ));
    }
}
