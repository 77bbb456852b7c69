//! Proof-of-work functions behind one interface.
//!
//! A share is judged by hashing its 80-byte header with the coin's algorithm and comparing the
//! result against a target. Bitcoin uses sha256d; Litecoin (and Dogecoin) use scrypt with
//! N=1024, r=1, p=1 and the header as both password and salt. The *block id* of every one of
//! these chains is sha256d of the header, whatever its proof-of-work algorithm.
//! New algorithms join by adding a variant here; callers only see [`PowAlgorithm::hash`].

use crate::hash::{sha256d_80, Hash256};
use crate::work::target::Target;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The proof-of-work algorithm a coin uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowAlgorithm {
    Sha256d,
    Scrypt,
}

impl PowAlgorithm {
    /// The proof-of-work hash of an 80-byte block header.
    #[inline]
    pub fn hash(self, header: &[u8; 80]) -> Hash256 {
        match self {
            PowAlgorithm::Sha256d => Hash256(sha256d_80(header)),
            PowAlgorithm::Scrypt => Hash256(scrypt_1024_1_1(header)),
        }
    }

    /// The pool convention for difficulty 1 (see [`crate::work::target`]).
    pub fn diff1(self) -> Target {
        match self {
            PowAlgorithm::Sha256d => Target::SHA256_DIFF1,
            PowAlgorithm::Scrypt => Target::SCRYPT_DIFF1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PowAlgorithm::Sha256d => "sha256d",
            PowAlgorithm::Scrypt => "scrypt",
        }
    }
}

impl fmt::Display for PowAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PowAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256d" | "sha256" => Ok(PowAlgorithm::Sha256d),
            "scrypt" => Ok(PowAlgorithm::Scrypt),
            other => Err(format!(
                "unknown algorithm '{other}' (known: sha256d, scrypt)"
            )),
        }
    }
}

/// Litecoin's scrypt: N=1024 (log2 10), r=1, p=1, 32-byte output, header as password and salt.
fn scrypt_1024_1_1(header: &[u8; 80]) -> [u8; 32] {
    // Params::new only fails for out-of-range values; these are constants the crate accepts.
    static PARAMS: std::sync::OnceLock<scrypt::Params> = std::sync::OnceLock::new();
    let params = PARAMS.get_or_init(|| {
        scrypt::Params::new(10, 1, 1, 32).expect("scrypt N=1024 r=1 p=1 is a valid parameter set")
    });
    let mut out = [0u8; 32];
    scrypt::scrypt(header, header, params, &mut out)
        .expect("a 32-byte output is within scrypt's limits");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_parse_by_name() {
        assert_eq!("scrypt".parse::<PowAlgorithm>(), Ok(PowAlgorithm::Scrypt));
        assert_eq!("sha256d".parse::<PowAlgorithm>(), Ok(PowAlgorithm::Sha256d));
        assert!("x11".parse::<PowAlgorithm>().is_err());
    }
}
