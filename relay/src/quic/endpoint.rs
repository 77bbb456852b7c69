//! QUIC endpoints for the core (server) and the edges (clients), with mutual TLS 1.3.
//!
//! The core's [`server_config`] demands a client certificate chaining to the operator CA: an
//! edge with no certificate, or with one from any other CA, fails the TLS handshake and is
//! never handed to the application as a connection, so no application byte from it is read.
//! The edge's [`client_config`] trusts the operator CA and nothing else: no system or web
//! roots, so a core certificate bought from a public CA would not do either.
//!
//! Both sides speak ALPN [`ALPN`] (`quarry/1`) over TLS 1.3 with the *ring* provider, chosen
//! explicitly rather than through rustls' process-wide default, so no caller has to install one.
//!
//! [`transport_config`] is shared by both ends: keep-alives well inside the idle timeout (a
//! NAT mapping survives, and a dead core is noticed in seconds), room for many concurrent
//! unidirectional streams (one per share batch), bounded receive buffers, and on the server,
//! connection migration, so an edge whose address changes keeps its connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::certs::{edge_dns_name, validate_edge_id, EDGE_DNS_SUFFIX};
use super::error::{QuicError, Result};

pub use super::backoff::Backoff;

/// Application-Layer Protocol Negotiation id of the relay protocol, version 1. A peer that does
/// not offer it fails the handshake.
pub const ALPN: &[u8] = b"quarry/1";

/// How often an idle connection sends a keep-alive: well inside [`MAX_IDLE_TIMEOUT`] and inside
/// the shortest common NAT UDP mapping lifetime (30 s).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A connection that hears nothing for this long is dead (four missed keep-alives).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Unidirectional streams a peer may have open at once: one per share batch in flight.
pub const MAX_CONCURRENT_UNI_STREAMS: u32 = 1024;

/// Bidirectional streams a peer may have open at once: the control stream, plus room for a
/// replacement while an old one is being torn down.
pub const MAX_CONCURRENT_BIDI_STREAMS: u32 = 4;

/// Flow-control window of one stream: many times a large share batch.
const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;

/// Flow-control window of one connection, which bounds what one edge can make the core buffer.
const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// The TLS implementation used on both ends: rustls with *ring*.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport parameters shared by the core and the edges (see the module docs).
/// Packets that may arrive after a later one before the earlier counts as lost (RFC 9002 uses
/// 3; jittery links reorder far more than that).
pub const REORDERING_PACKET_THRESHOLD: u32 = 32;
/// Time, in RTTs, a packet may lag behind a later acknowledged one before it counts as lost
/// (RFC 9002: 9/8).
pub const REORDERING_TIME_THRESHOLD: f32 = 1.5;

pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(idle_timeout()))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_CONCURRENT_UNI_STREAMS))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_BIDI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        // The relay protocol uses streams only; unreliable datagrams would be an unused door.
        .datagram_receive_buffer_size(None)
        // Farm uplinks lose packets for reasons other than congestion (radio, satellite) and
        // reorder them under jitter. A loss-based controller (the default, Cubic) halves its
        // window at every such loss and, after a blackout, crawls back from two packets; the
        // backlog of spooled batches then never drains. BBR paces by measured bandwidth and
        // RTT instead, and a higher reordering threshold stops jitter from counting as loss.
        .congestion_controller_factory(std::sync::Arc::new(quinn::congestion::BbrConfig::default()))
        .packet_threshold(REORDERING_PACKET_THRESHOLD)
        .time_threshold(REORDERING_TIME_THRESHOLD);
    transport
}

fn idle_timeout() -> IdleTimeout {
    // 20 s in milliseconds is far below the VarInt limit (2^62).
    IdleTimeout::from(VarInt::from_u32(MAX_IDLE_TIMEOUT.as_millis() as u32))
}

/// The core's QUIC server configuration.
///
/// - `cert_chain`, `key`: the core's certificate (leaf first) and private key.
/// - `client_ca`: the operator CA certificate(s) that edge certificates must chain to.
///
/// TLS 1.3 only, ALPN `quarry/1`, client certificates required and verified (chain, validity,
/// client-auth key usage) during the handshake. No 0-RTT: early data could be replayed.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: &[CertificateDer<'static>],
) -> Result<quinn::ServerConfig> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(client_ca, "client CA")?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| QuicError::Tls(format!("client certificate verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(format!("TLS 1.3: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)
        .map_err(|e| QuicError::Tls(format!("core certificate and key: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(format!("QUIC server: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config
        .transport_config(Arc::new(transport_config()))
        .migration(true);
    Ok(config)
}

/// An edge's QUIC client configuration.
///
/// - `ca`: the operator CA certificate(s); the only roots trusted for the core's certificate.
/// - `edge_cert_chain`, `edge_key`: the edge's certificate (leaf first) and private key,
///   presented to the core.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    edge_cert_chain: Vec<CertificateDer<'static>>,
    edge_key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig> {
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(format!("TLS 1.3: {e}")))?
        .with_root_certificates(root_store(ca, "operator CA")?)
        .with_client_auth_cert(edge_cert_chain, edge_key)
        .map_err(|e| QuicError::Tls(format!("edge certificate and key: {e}")))?;
    quic_client_config(tls)
}

/// Wraps a rustls client configuration for QUIC with the relay's ALPN and transport.
pub(crate) fn quic_client_config(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| QuicError::Tls(format!("QUIC client: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

fn root_store(certs: &[CertificateDer<'static>], what: &str) -> Result<RootCertStore> {
    if certs.is_empty() {
        return Err(QuicError::Tls(format!("{what}: no certificate given")));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| QuicError::Tls(format!("{what} certificate {i}: {e}")))?;
    }
    Ok(roots)
}

/// A server endpoint listening on `bind`. Must be called inside a tokio runtime.
pub fn server_endpoint(bind: SocketAddr, config: quinn::ServerConfig) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, bind)
        .map_err(|source| QuicError::Endpoint { addr: bind, source })
}

/// A client endpoint bound to `bind` (e.g. `127.0.0.1:0` or `0.0.0.0:0`) that dials with
/// `config` by default. Must be called inside a tokio runtime.
pub fn client_endpoint(bind: SocketAddr, config: quinn::ClientConfig) -> Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| QuicError::Endpoint { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The edge id of the peer of an established connection, read from its verified client
/// certificate (see [`edge_id_from_cert`]).
///
/// Only meaningful on the core's side of a connection made with [`server_config`], where the
/// certificate was verified against the operator CA during the handshake.
pub fn peer_edge_id(conn: &quinn::Connection) -> Result<String> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| QuicError::PeerIdentity("the peer presented no certificate".into()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| QuicError::PeerIdentity("the peer identity is not an X.509 chain".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| QuicError::PeerIdentity("the peer's certificate chain is empty".into()))?;
    edge_id_from_cert(leaf)
}

/// The edge id an edge certificate names: its subject common name, which must be a valid edge
/// id and must match its one `*.edge.quarry` DNS name. Anything else (a core certificate, a
/// certificate with two edge names) is refused.
pub fn edge_id_from_cert(cert: &CertificateDer<'_>) -> Result<String> {
    let bad = |reason: String| QuicError::PeerIdentity(reason);
    let (_, cert) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
    let mut common_names = cert.subject().iter_common_name();
    let (Some(cn), None) = (common_names.next(), common_names.next()) else {
        return Err(bad(
            "certificate subject must have exactly one common name".into()
        ));
    };
    let edge_id = cn
        .as_str()
        .map_err(|e| bad(format!("certificate common name is not a string: {e}")))?;
    validate_edge_id(edge_id).map_err(|e| bad(e.to_string()))?;

    let suffix = format!(".{EDGE_DNS_SUFFIX}");
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subjectAltName does not parse: {e}")))?
        .ok_or_else(|| bad("certificate has no subjectAltName".into()))?;
    let edge_names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        })
        .filter(|dns| dns.ends_with(&suffix))
        .collect();
    let expected = edge_dns_name(edge_id);
    match edge_names.as_slice() {
        [only] if *only == expected => Ok(edge_id.to_owned()),
        [] => Err(bad(format!("certificate names no *{suffix} DNS name"))),
        [only] => Err(bad(format!(
            "common name {edge_id:?} does not match DNS name {only:?}"
        ))),
        more => Err(bad(format!(
            "certificate names {} edges, expected one",
            more.len()
        ))),
    }
}
