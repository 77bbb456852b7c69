//! Stratum error codes and protocol errors.
//!
//! Pools answer a rejected request with `"error": [code, "message", null]`. The codes below are
//! the ones real pools send (they come from the original Stratum server and are what miners'
//! firmware displays): 20 other/unknown, 21 job not found (stale), 22 duplicate share, 23 low
//! difficulty share, 24 unauthorized worker, 25 not subscribed.

use std::borrow::Cow;
use std::fmt;

/// A Stratum error code. Upstream pools may send codes outside the usual set; they are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub i64);

impl ErrorCode {
    pub const OTHER: ErrorCode = ErrorCode(20);
    pub const JOB_NOT_FOUND: ErrorCode = ErrorCode(21);
    pub const DUPLICATE_SHARE: ErrorCode = ErrorCode(22);
    pub const LOW_DIFFICULTY: ErrorCode = ErrorCode(23);
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(24);
    pub const NOT_SUBSCRIBED: ErrorCode = ErrorCode(25);
}

/// An error as sent to (or received from) a Stratum peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StratumError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl StratumError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        StratumError {
            code,
            message: message.into(),
        }
    }
    pub fn other(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::OTHER, message)
    }
    pub fn job_not_found() -> Self {
        Self::new(ErrorCode::JOB_NOT_FOUND, "Job not found")
    }
    pub fn stale() -> Self {
        Self::new(ErrorCode::JOB_NOT_FOUND, "Stale share")
    }
    pub fn duplicate() -> Self {
        Self::new(ErrorCode::DUPLICATE_SHARE, "Duplicate share")
    }
    pub fn low_difficulty() -> Self {
        Self::new(ErrorCode::LOW_DIFFICULTY, "Low difficulty share")
    }
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::UNAUTHORIZED, "Unauthorized worker")
    }
    pub fn not_subscribed() -> Self {
        Self::new(ErrorCode::NOT_SUBSCRIBED, "Not subscribed")
    }
}

impl fmt::Display for StratumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code.0, self.message)
    }
}

/// Why a line could not be understood. Messages name the method and field.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Json(#[from] super::scan::ScanError),
    #[error("{method}: {reason}")]
    Params { method: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl ProtocolError {
    pub fn params(method: &str, reason: impl Into<String>) -> Self {
        ProtocolError::Params {
            method: method.to_string(),
            reason: reason.into(),
        }
    }

    /// The error a miner receives for this malformed request (code 20, naming the problem).
    pub fn to_stratum(&self) -> StratumError {
        StratumError::other(format!("Malformed request: {self}"))
    }
}
