//! Quarry as a client of a larger Stratum V1 pool (proxy mining, and the edge's backup pool).
//!
//! [`session`] is the protocol without I/O; [`conn`] runs one session over TCP or TLS in a
//! thread of its own; [`url`] reads `stratum+tcp://` / `stratum+ssl://` addresses;
//! [`translate`] turns an upstream's jobs into ours and our shares into its submits (the same
//! for the core's proxy and the edge's backup pool). Choosing among several upstreams and
//! forwarding is the core pool's business (`core_pool::proxy`).

pub mod conn;
pub mod session;
pub mod translate;
pub mod url;

pub use conn::{load_tls_roots, ConnEvent, ConnectOptions, UpstreamConn};
pub use session::{
    ShareVerdict, SubmitError, UpstreamConfig, UpstreamError, UpstreamEvent, UpstreamSession,
    UpstreamShare,
};
pub use url::{PoolUrl, PoolUrlError};
