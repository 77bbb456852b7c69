//! The edge-core transport: QUIC with mutual TLS 1.3, rooted at the operator's own CA.
//!
//! An edge runs on a mining farm and talks to a core-pool shard over the internet. Both ends
//! prove who they are with certificates that the operator issued from one private CA
//! ([`certs`]): the core's certificate names the host names and addresses edges dial, and each
//! edge's certificate carries its edge id, so the core learns *which* edge it is talking to from
//! the handshake itself ([`endpoint::peer_edge_id`]), not from anything the edge later says.
//! A peer without such a certificate is refused during the handshake, before a single
//! application byte is read ([`endpoint::server_config`]).
//!
//! The connection keeps itself alive, survives a change of the edge's address (NAT rebinding,
//! a new uplink) through QUIC connection migration, and leaves room for many unidirectional
//! streams, one per share batch (see the relay protocol in the design notes). When it does drop,
//! the edge waits out a jittered exponential [`Backoff`] before dialling again.

pub mod backoff;
pub mod certs;
pub mod endpoint;
mod error;

#[cfg(test)]
mod tests;

pub use backoff::Backoff;
pub use certs::{CaBundle, IssuedCert};
pub use endpoint::{peer_edge_id, ALPN};
pub use error::{QuicError, Result};
