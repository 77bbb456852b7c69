//! The one error type of [`crate::quic`]: each variant names the file, the name or the step
//! that was wrong.

use std::io;
use std::path::PathBuf;

/// A failure to build, load or use the operator PKI or a QUIC endpoint.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Reading or writing a certificate or key file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or directory) that could not be read or written.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A PEM document did not hold what it should.
    #[error("{what}: {reason}")]
    Pem {
        /// Where the PEM came from: a file path or a description.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
    /// rcgen refused to generate, parse or sign a certificate.
    #[error("{step}: {source}")]
    Certificate {
        /// The step that failed (`"generate CA key"`, `"sign edge certificate"`, ...).
        step: &'static str,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// An edge id that cannot be used as a certificate name.
    #[error("edge id {id:?}: {reason}")]
    InvalidEdgeId {
        /// The offending id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A core certificate name that is neither an IP address nor a DNS name.
    #[error("core certificate name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("CA key does not match the CA certificate ({0})")]
    CaKeyMismatch(String),
    /// rustls refused the TLS configuration (bad key, unusable CA, ...).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The peer's verified certificate does not carry a usable edge identity.
    #[error("peer identity: {0}")]
    PeerIdentity(String),
    /// A socket could not be bound or an endpoint could not be created.
    #[error("endpoint on {addr}: {source}")]
    Endpoint {
        /// The local address asked for.
        addr: std::net::SocketAddr,
        /// What the operating system or quinn said.
        source: io::Error,
    },
}

/// Result of the [`crate::quic`] functions.
pub type Result<T> = std::result::Result<T, QuicError>;

impl QuicError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn cert(step: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| Self::Certificate { step, source }
    }
}
