//! Quarry as a client of a larger Stratum V1 pool (proxy mining, and the edge's backup pool).
//!
//! [`session`] is the protocol without I/O; [`conn`] runs one session over TCP or TLS in a
//! thread of its own; [`url`] reads `stratum+tcp://` / `stratum+ssl://` addresses. Choosing
//! among several upstreams, translating their jobs and forwarding shares is the core pool's
//! business (`core_pool::proxy`); this module only speaks the protocol.

pub mod conn;
pub mod session;
pub mod url;

pub use conn::{load_tls_roots, ConnEvent, ConnectOptions, UpstreamConn};
pub use session::{
    ShareVerdict, SubmitError, UpstreamConfig, UpstreamError, UpstreamEvent, UpstreamSession,
    UpstreamShare,
};
pub use url::{PoolUrl, PoolUrlError};
