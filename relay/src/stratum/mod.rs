//! Stratum V1: the line protocol miners speak.
//!
//! Stratum V1 is JSON-RPC over TCP, one JSON object per line. A miner subscribes (receives its
//! extranonce1), authorizes a worker name, optionally negotiates extensions (BIP310), then
//! receives jobs (`mining.notify`) and difficulties (`mining.set_difficulty`) and submits shares
//! (`mining.submit`). Real firmware is sloppy in places — ids as numbers or strings, extra
//! whitespace, upper-case hex — and this codec accepts that, while being strict about what
//! decides whether a share is valid: hex lengths and field counts, with errors naming the field.

pub mod error;
pub mod framer;
pub mod message;
pub mod scan;

pub use error::{ErrorCode, ProtocolError, StratumError};
pub use framer::{FrameError, LineFramer, DEFAULT_MAX_LINE};
pub use message::{
    encode_bool_result, encode_error, encode_result, ClientRequest, Configure, ParseFailure,
    Request, RequestId, Response, ServerMessage, ServerNotification, Submit, VersionRollingRequest,
};
