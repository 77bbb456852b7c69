//! The QUIC shell proved over real UDP on loopback: mutual TLS admits only the operator's
//! edges, garbage datagrams do not disturb a live connection, and a connection survives its
//! client moving to a new socket.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::certs::{generate_ca, issue_core_cert, issue_edge_cert, CaBundle, IssuedCert};
use super::endpoint::{
    client_config, client_endpoint, crypto_provider, peer_edge_id, quic_client_config,
    server_config, server_endpoint,
};

/// Every test finishes well within this, or fails.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for something that must *not* happen.
const QUIET_PERIOD: Duration = Duration::from_millis(300);

const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";

fn loopback() -> SocketAddr {
    LOOPBACK_ANY_PORT.parse().expect("loopback address")
}

struct Pki {
    ca: CaBundle,
    core: IssuedCert,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca = generate_ca(name).expect("generate CA");
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let core = issue_core_cert(&ca, &names).expect("issue core cert");
        Self { ca, core }
    }

    fn ca_der(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        vec![self.ca.cert_der().expect("CA der")]
    }

    fn edge(&self, edge_id: &str) -> IssuedCert {
        issue_edge_cert(&self.ca, edge_id).expect("issue edge cert")
    }

    /// A client endpoint that trusts this PKI's CA and presents `cert`.
    fn client(&self, cert: &IssuedCert) -> quinn::Endpoint {
        let config = client_config(
            &self.ca_der(),
            cert.cert_chain().expect("chain"),
            cert.private_key().expect("key"),
        )
        .expect("client config");
        client_endpoint(loopback(), config).expect("client endpoint")
    }

    /// A core server endpoint with this PKI's core certificate, admitting edges of `edge_ca`.
    fn server(&self, edge_ca: &Pki) -> quinn::Endpoint {
        let config = server_config(
            self.core.cert_chain().expect("chain"),
            self.core.private_key().expect("key"),
            &edge_ca.ca_der(),
        )
        .expect("server config");
        server_endpoint(loopback(), config).expect("server endpoint")
    }
}

/// What the test core saw.
#[derive(Debug)]
enum ServerEvent {
    Connected {
        edge_id: Result<String, String>,
        conn: quinn::Connection,
    },
    HandshakeFailed(String),
    StreamAccepted,
}

/// Runs an echo core on `endpoint`: every bidirectional stream echoes length-prefixed messages.
fn spawn_echo_core(endpoint: quinn::Endpoint) -> mpsc::UnboundedReceiver<ServerEvent> {
    let (events, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let events = events.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = events.send(ServerEvent::HandshakeFailed(e.to_string()));
                        return;
                    }
                };
                let edge_id = peer_edge_id(&conn).map_err(|e| e.to_string());
                let _ = events.send(ServerEvent::Connected {
                    edge_id,
                    conn: conn.clone(),
                });
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let _ = events.send(ServerEvent::StreamAccepted);
                    tokio::spawn(echo(send, recv));
                }
            });
        }
    });
    rx
}

async fn echo(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    loop {
        let mut len = [0u8; 4];
        if recv.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        if recv.read_exact(&mut payload).await.is_err() {
            break;
        }
        if send.write_all(&len).await.is_err() || send.write_all(&payload).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
}

/// Sends one length-prefixed message and reads the echo.
async fn exchange(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    message: &[u8],
) -> Result<Vec<u8>, String> {
    let len = u32::try_from(message.len()).map_err(|e| e.to_string())?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    send.write_all(message)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut echoed_len = [0u8; 4];
    recv.read_exact(&mut echoed_len)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let mut echoed = vec![0u8; u32::from_be_bytes(echoed_len) as usize];
    recv.read_exact(&mut echoed)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(echoed)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<ServerEvent>) -> ServerEvent {
    events.recv().await.expect("echo core stopped")
}

/// Asserts that the core never admitted a connection or a stream, and saw a failed handshake.
async fn assert_refused_by_core(events: &mut mpsc::UnboundedReceiver<ServerEvent>) {
    match next_event(events).await {
        ServerEvent::HandshakeFailed(reason) => {
            assert!(!reason.is_empty());
        }
        other => panic!("core admitted a refused edge: {other:?}"),
    }
    // Nothing else trickles in afterwards: no connection, no stream.
    if let Ok(Some(event)) = tokio::time::timeout(QUIET_PERIOD, events.recv()).await {
        panic!("core admitted a refused edge: {event:?}");
    }
}

/// What happens to an edge the core refuses. Under TLS 1.3 the client sends its certificate
/// in its last flight, so quinn may report the handshake complete a moment before the core's
/// refusal arrives; either way, no exchange may ever succeed.
async fn assert_refused_at_edge(edge: &quinn::Endpoint, core: SocketAddr) -> String {
    let conn = match edge.connect(core, "localhost").expect("connect").await {
        Err(e) => return format!("connect failed: {e}"),
        Ok(conn) => conn,
    };
    let attempt = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        exchange(&mut send, &mut recv, b"let me in").await
    };
    match attempt.await {
        Ok(echo) => panic!("refused edge exchanged data: {echo:?}"),
        Err(e) => format!(
            "connection closed: {e} (close reason {:?})",
            conn.close_reason()
        ),
    }
}

async fn bounded<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound")
}

#[tokio::test]
async fn valid_edge_connects_echoes_and_core_reads_its_edge_id() {
    bounded(async {
        let pki = Pki::new("Quarry test CA");
        let core = pki.server(&pki);
        let core_addr = core.local_addr().expect("core addr");
        let mut events = spawn_echo_core(core);
        let edge = pki.client(&pki.edge("farm-7"));

        // Dial by IP address: the core certificate's IP SAN must match.
        let conn = edge
            .connect(core_addr, "127.0.0.1")
            .expect("connect")
            .await
            .expect("handshake");
        assert_eq!(
            conn.handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol),
            Some(super::ALPN.to_vec())
        );
        let (mut send, mut recv) = conn.open_bi().await.expect("open bi");
        let echoed = exchange(&mut send, &mut recv, b"hello core").await;
        assert_eq!(echoed.as_deref(), Ok(&b"hello core"[..]));

        match next_event(&mut events).await {
            ServerEvent::Connected { edge_id, .. } => assert_eq!(edge_id.as_deref(), Ok("farm-7")),
            other => panic!("expected a connection, got {other:?}"),
        }
        assert!(matches!(
            next_event(&mut events).await,
            ServerEvent::StreamAccepted
        ));
        // The core's own certificate is not an edge identity.
        assert!(peer_edge_id(&conn).is_err());
    })
    .await;
}

#[tokio::test]
async fn edge_with_cert_from_another_ca_is_refused_in_the_handshake() {
    bounded(async {
        let operator = Pki::new("Quarry operator CA");
        let rogue = Pki::new("Rogue CA");
        let core = operator.server(&operator);
        let core_addr = core.local_addr().expect("core addr");
        let mut events = spawn_echo_core(core);

        // The rogue edge trusts the operator CA (so it accepts the core) but its own
        // certificate chains to the rogue CA.
        let rogue_edge = rogue.edge("farm-7");
        let config = client_config(
            &operator.ca_der(),
            rogue_edge.cert_chain().expect("chain"),
            rogue_edge.private_key().expect("key"),
        )
        .expect("client config");
        let edge = client_endpoint(loopback(), config).expect("client endpoint");

        let outcome = assert_refused_at_edge(&edge, core_addr).await;
        assert!(outcome.contains("UnknownIssuer"), "{outcome}");
        eprintln!("edge with a foreign certificate: {outcome}");
        assert_refused_by_core(&mut events).await;
    })
    .await;
}

#[tokio::test]
async fn edge_without_client_cert_is_refused_in_the_handshake() {
    bounded(async {
        let pki = Pki::new("Quarry test CA");
        let core = pki.server(&pki);
        let core_addr = core.local_addr().expect("core addr");
        let mut events = spawn_echo_core(core);

        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der().remove(0)).expect("root");
        let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let edge = client_endpoint(loopback(), quic_client_config(tls).expect("quic config"))
            .expect("client endpoint");

        let outcome = assert_refused_at_edge(&edge, core_addr).await;
        assert!(outcome.to_lowercase().contains("certificate"), "{outcome}");
        eprintln!("edge without a certificate: {outcome}");
        assert_refused_by_core(&mut events).await;
    })
    .await;
}

#[tokio::test]
async fn core_certificate_cannot_log_in_as_an_edge() {
    bounded(async {
        // Same CA, but the core's certificate is for server authentication only.
        let pki = Pki::new("Quarry test CA");
        let core = pki.server(&pki);
        let core_addr = core.local_addr().expect("core addr");
        let mut events = spawn_echo_core(core);
        let edge = pki.client(&pki.core);

        let outcome = assert_refused_at_edge(&edge, core_addr).await;
        eprintln!("edge with the core's certificate: {outcome}");
        assert_refused_by_core(&mut events).await;
    })
    .await;
}

#[tokio::test]
async fn edge_refuses_a_core_whose_cert_is_not_from_the_operator_ca() {
    bounded(async {
        let operator = Pki::new("Quarry operator CA");
        let impostor = Pki::new("Impostor CA");
        // The impostor core would even admit operator edges; the edge must still refuse it.
        let core = impostor.server(&operator);
        let core_addr = core.local_addr().expect("core addr");
        let _events = spawn_echo_core(core);
        let edge = operator.client(&operator.edge("farm-7"));

        let result = edge.connect(core_addr, "localhost").expect("connect").await;
        let err = result.expect_err("edge accepted an impostor core");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn edge_refuses_a_core_certificate_for_another_name() {
    bounded(async {
        let pki = Pki::new("Quarry test CA");
        let core = pki.server(&pki);
        let core_addr = core.local_addr().expect("core addr");
        let _events = spawn_echo_core(core);
        let edge = pki.client(&pki.edge("farm-7"));

        let result = edge
            .connect(core_addr, "core.example.net")
            .expect("connect")
            .await;
        let err = result.expect_err("name mismatch accepted");
        assert!(err.to_string().contains("not valid for name"), "{err}");
    })
    .await;
}

/// A tiny deterministic generator (xorshift64*), so the garbage is reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// Sends `count` garbage datagrams to `target` from a plain UDP socket: random lengths and
/// bytes, with a quarter shaped like QUIC v1 Initial packets (long header, version 1, padded to
/// 1200 bytes) so that they reach the server's packet decryption, not just its header parser.
fn spray_garbage(target: SocketAddr, count: usize, seed: u64) -> std::io::Result<usize> {
    let socket = UdpSocket::bind(LOOPBACK_ANY_PORT)?;
    let mut rng = XorShift(seed);
    let mut buf = [0u8; 1500];
    let mut sent = 0;
    for i in 0..count {
        let len = if i % 4 == 0 {
            1200 + rng.below(301) as usize
        } else {
            1 + rng.below(1500) as usize
        };
        let packet = &mut buf[..len];
        rng.fill(packet);
        if i % 4 == 0 {
            packet[0] = 0xc0 | (packet[0] & 0x0f); // long header, Initial
            packet[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1 (RFC 9000)
            packet[5] = 8 + (packet[5] % 13); // DCID length 8..=20
        }
        // A full socket buffer on loopback is the server's problem, not the test's.
        if socket.send_to(packet, target).is_ok() {
            sent += 1;
        }
        if i % 256 == 255 {
            std::thread::yield_now();
        }
    }
    Ok(sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_disturb_a_connected_edge() {
    bounded(async {
        let pki = Pki::new("Quarry test CA");
        let core = pki.server(&pki);
        let core_addr = core.local_addr().expect("core addr");
        let mut events = spawn_echo_core(core);
        let edge = pki.client(&pki.edge("farm-7"));
        let conn = edge
            .connect(core_addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("open bi");
        assert!(exchange(&mut send, &mut recv, b"before").await.is_ok());

        const GARBAGE: usize = 5000;
        let done = Arc::new(AtomicBool::new(false));
        let sprayer = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut total = 0;
                for round in 0..4u64 {
                    total += spray_garbage(core_addr, GARBAGE / 4, 0x9e37_79b9_7f4a_7c15 ^ round)
                        .expect("garbage socket");
                    std::thread::sleep(Duration::from_millis(20));
                }
                done.store(true, Ordering::SeqCst);
                total
            })
        };

        let mut exchanges = 0u32;
        while !done.load(Ordering::SeqCst) || exchanges < 50 {
            let message = format!("share batch {exchanges}");
            let echoed = exchange(&mut send, &mut recv, message.as_bytes()).await;
            assert_eq!(
                echoed.as_deref(),
                Ok(message.as_bytes()),
                "exchange {exchanges} during the flood"
            );
            exchanges += 1;
        }
        let sent = sprayer.join().expect("sprayer thread");
        eprintln!("{exchanges} exchanges while {sent} garbage datagrams arrived");
        assert!(sent > GARBAGE / 2, "only {sent} garbage datagrams went out");

        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
        assert_eq!(
            exchange(&mut send, &mut recv, b"after").await.as_deref(),
            Ok(&b"after"[..])
        );
        // The garbage produced no connections and no streams at the core.
        assert!(matches!(
            next_event(&mut events).await,
            ServerEvent::Connected { .. }
        ));
        assert!(matches!(
            next_event(&mut events).await,
            ServerEvent::StreamAccepted
        ));
        assert!(
            events.try_recv().is_err(),
            "garbage reached the application"
        );
    })
    .await;
}

#[tokio::test]
async fn connection_survives_the_edge_moving_to_a_new_socket() {
    bounded(async {
        let pki = Pki::new("Quarry test CA");
        let core = pki.server(&pki);
        let core_addr = core.local_addr().expect("core addr");
        let mut events = spawn_echo_core(core);
        let edge = pki.client(&pki.edge("farm-7"));
        let conn = edge
            .connect(core_addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("open bi");
        assert!(exchange(&mut send, &mut recv, b"from the old address")
            .await
            .is_ok());

        let server_conn = match next_event(&mut events).await {
            ServerEvent::Connected { conn, .. } => conn,
            other => panic!("expected a connection, got {other:?}"),
        };
        let old_addr = edge.local_addr().expect("old addr");
        assert_eq!(server_conn.remote_address(), old_addr);

        let new_socket = UdpSocket::bind(LOOPBACK_ANY_PORT).expect("new socket");
        let new_addr = new_socket.local_addr().expect("new addr");
        edge.rebind(new_socket).expect("rebind");
        assert_eq!(edge.local_addr().expect("local addr"), new_addr);
        assert_ne!(new_addr, old_addr);

        for i in 0..20 {
            let message = format!("from the new address {i}");
            assert_eq!(
                exchange(&mut send, &mut recv, message.as_bytes())
                    .await
                    .as_deref(),
                Ok(message.as_bytes())
            );
        }
        assert_eq!(
            server_conn.remote_address(),
            new_addr,
            "core did not migrate"
        );
        assert!(conn.close_reason().is_none());
        // A new stream on the migrated connection works too.
        let (mut send2, mut recv2) = conn.open_bi().await.expect("open bi after migration");
        assert!(exchange(&mut send2, &mut recv2, b"fresh stream")
            .await
            .is_ok());
    })
    .await;
}

#[test]
fn edge_id_is_read_only_from_edge_certificates() {
    use super::endpoint::edge_id_from_cert;
    let pki = Pki::new("Quarry test CA");
    let edge = pki.edge("rack-12");
    let chain = edge.cert_chain().expect("chain");
    assert_eq!(edge_id_from_cert(&chain[0]).expect("edge id"), "rack-12");

    let core_chain = pki.core.cert_chain().expect("chain");
    let err = edge_id_from_cert(&core_chain[0]).expect_err("core cert is no edge");
    assert!(err.to_string().contains("edge.quarry"), "{err}");

    let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
    assert!(edge_id_from_cert(&garbage).is_err());
}
