//! The thin I/O shell around [`UpstreamSession`]: one thread per upstream connection.
//!
//! A proxy holds a handful of upstream connections, not thousands, so a thread each is the
//! simple choice; what matters is that a share to forward never waits for a read timeout. The
//! thread sleeps in one mio `poll` on the socket and a [`mio::Waker`]; [`UpstreamConn::submit`]
//! queues the share on a channel and wakes it, so a share goes out within a wake-up of arriving.
//! TLS (`stratum+ssl://`) is rustls driven by hand over the non-blocking socket.
//!
//! The connection does not reconnect by itself: when it ends, its owner hears
//! [`ConnEvent::Closed`] with the reason and decides (back off, fail over, follow a
//! `client.reconnect`).

use super::session::{UpstreamConfig, UpstreamEvent, UpstreamSession, UpstreamShare};
use super::url::PoolUrl;
use crate::stratum::{FrameError, LineFramer};
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, RootCertStore};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
/// Lines from pools are short except `mining.notify` with a long merkle branch (~1.5 KB).
const MAX_UPSTREAM_LINE: usize = 64 * 1024;
/// A pool that leaves this much of our output unread is not reading.
const MAX_PENDING_OUT: usize = 4 << 20;

/// How to reach one upstream pool.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub url: PoolUrl,
    pub session: UpstreamConfig,
    pub connect_timeout: Duration,
    /// Nothing at all from the pool for this long: the connection is dead, close it.
    pub idle_timeout: Duration,
    /// Roots for `stratum+ssl://` (see [`load_tls_roots`]); unused for plain TCP.
    pub tls_roots: Option<Arc<RootCertStore>>,
}

impl ConnectOptions {
    pub fn new(url: PoolUrl, session: UpstreamConfig) -> Self {
        ConnectOptions {
            url,
            session,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(180),
            tls_roots: None,
        }
    }
}

/// What the connection thread reports, tagged with the owner's index for the connection.
// Session events (jobs) dominate and are the common case; boxing them would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ConnEvent {
    /// TCP (and TLS, when used) is up; the Stratum handshake is under way.
    Connected {
        peer: SocketAddr,
    },
    Session(UpstreamEvent),
    /// The connection is over (never reported twice).
    Closed {
        reason: String,
    },
}

enum Command {
    Submit { ticket: u64, share: UpstreamShare },
    Close,
}

/// A running upstream connection. Dropping it closes the connection without waiting for its
/// thread (which may be inside a connect timeout); [`UpstreamConn::close`] waits.
pub struct UpstreamConn {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConn").finish_non_exhaustive()
    }
}

impl UpstreamConn {
    /// Starts connecting in a new thread; every event goes to `events` as `(tag, event)`.
    pub fn spawn(
        opts: ConnectOptions,
        tag: usize,
        events: Sender<(usize, ConnEvent)>,
    ) -> io::Result<UpstreamConn> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{tag}"))
            .spawn(move || {
                let reason = match run(poll, &opts, &rx, tag, &events) {
                    Ok(reason) => reason,
                    Err(e) => e.to_string(),
                };
                let _ = events.send((tag, ConnEvent::Closed { reason }));
            })?;
        Ok(UpstreamConn {
            commands: tx,
            waker,
            thread: Some(thread),
        })
    }

    /// Queues a share; its verdict comes back as [`UpstreamEvent::ShareResult`] with `ticket`.
    /// Returns false when the connection is already gone (the share was not sent).
    pub fn submit(&self, ticket: u64, share: UpstreamShare) -> bool {
        self.commands
            .send(Command::Submit { ticket, share })
            .is_ok()
            && self.waker.wake().is_ok()
    }

    /// Closes the connection and waits for its thread.
    pub fn close(mut self) {
        self.signal_close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal_close(&self) {
        let _ = self.commands.send(Command::Close);
        let _ = self.waker.wake();
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        self.signal_close();
    }
}

/// Trust roots for `stratum+ssl://`: the PEM file given, or else the system bundle
/// (`/etc/ssl/certs/ca-certificates.crt`, Debian's `ca-certificates`).
pub fn load_tls_roots(pem_file: Option<&Path>) -> Result<RootCertStore, String> {
    let path = pem_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: certificate not usable as a root: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE in it", path.display()));
    }
    Ok(roots)
}

enum Transport {
    Plain,
    Tls(Box<ClientConnection>),
}

fn connect(opts: &ConnectOptions) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let addrs: Vec<SocketAddr> = (opts.url.host.as_str(), opts.url.port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("resolving {}: {e}", opts.url.host)))?
        .collect();
    let mut last = io::Error::new(ErrorKind::NotFound, "no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, opts.connect_timeout) {
            Ok(s) => return Ok((s, a)),
            Err(e) => last = io::Error::new(e.kind(), format!("connecting to {a}: {e}")),
        }
    }
    Err(last)
}

fn run(
    mut poll: Poll,
    opts: &ConnectOptions,
    commands: &Receiver<Command>,
    tag: usize,
    events: &Sender<(usize, ConnEvent)>,
) -> io::Result<String> {
    let (std_sock, peer) = connect(opts)?;
    std_sock.set_nodelay(true)?;
    std_sock.set_nonblocking(true)?;
    let mut sock = TcpStream::from_std(std_sock);
    poll.registry()
        .register(&mut sock, SOCKET, Interest::READABLE)?;
    let mut transport = if opts.url.tls {
        let roots = opts.tls_roots.clone().ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidInput, "stratum+ssl without TLS roots")
        })?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(opts.url.host.clone())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("TLS name: {e}")))?;
        Transport::Tls(Box::new(
            ClientConnection::new(Arc::new(cfg), name)
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?,
        ))
    } else {
        Transport::Plain
    };
    let _ = events.send((tag, ConnEvent::Connected { peer }));
    let mut session = UpstreamSession::new(opts.session.clone(), Instant::now());
    let mut framer = LineFramer::new(MAX_UPSTREAM_LINE);
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut evs = Events::with_capacity(16);
    let mut last_heard = Instant::now();
    let mut writable_armed = false;
    loop {
        // Everything the session wants sent goes to the transport first.
        if let Some(bytes) = session.poll_transmit() {
            match &mut transport {
                Transport::Plain => out.extend_from_slice(&bytes),
                Transport::Tls(c) => c.writer().write_all(&bytes)?,
            }
        }
        flush(&mut transport, &mut sock, &mut out)?;
        if out.len() > MAX_PENDING_OUT {
            return Ok(format!("pool is not reading ({} bytes unsent)", out.len()));
        }
        let want_write =
            !out.is_empty() || matches!(&transport, Transport::Tls(c) if c.wants_write());
        if want_write != writable_armed {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry().reregister(&mut sock, SOCKET, interest)?;
            writable_armed = want_write;
        }
        if !hand_over(&mut session, tag, events) {
            return Ok("owner went away".into());
        }
        let now = Instant::now();
        let idle_deadline = last_heard + opts.idle_timeout;
        if now >= idle_deadline {
            return Ok(format!("nothing from the pool for {:?}", opts.idle_timeout));
        }
        let deadline = session
            .poll_timeout()
            .map_or(idle_deadline, |t| t.min(idle_deadline));
        poll.poll(&mut evs, Some(deadline.saturating_duration_since(now)))?;
        let now = Instant::now();
        let mut readable = false;
        for ev in evs.iter() {
            if ev.token() == SOCKET && (ev.is_readable() || ev.is_read_closed()) {
                readable = true;
            }
        }
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Submit { ticket, share } => {
                    if let Err(e) = session.submit(ticket, &share, now) {
                        let _ = events.send((
                            tag,
                            ConnEvent::Session(UpstreamEvent::ShareResult {
                                ticket,
                                verdict: super::session::ShareVerdict::Rejected(
                                    crate::stratum::StratumError::other(e.to_string()),
                                ),
                                latency: Duration::ZERO,
                            }),
                        ));
                    }
                }
                Command::Close => return Ok("closed by its owner".into()),
            }
        }
        if readable {
            let eof = read_some(&mut transport, &mut sock, &mut buf, &mut framer)?;
            loop {
                match framer.next_line() {
                    None => break,
                    Some(Ok(line)) => {
                        last_heard = now;
                        if let Err(e) = session.handle_line(&line, now) {
                            hand_over(&mut session, tag, events);
                            return Ok(e.to_string());
                        }
                    }
                    Some(Err(e @ FrameError::LineTooLong { .. })) => {
                        let _ = events.send((
                            tag,
                            ConnEvent::Session(UpstreamEvent::Ignored {
                                reason: e.to_string(),
                            }),
                        ));
                    }
                }
            }
            if eof {
                hand_over(&mut session, tag, events);
                return Ok("the pool closed the connection".into());
            }
        }
        session
            .handle_timeout(now)
            .map_err(|e| io::Error::new(ErrorKind::TimedOut, e.to_string()))?;
    }
}

/// Sends the session's pending events to the owner; false when the owner is gone.
fn hand_over(
    session: &mut UpstreamSession,
    tag: usize,
    events: &Sender<(usize, ConnEvent)>,
) -> bool {
    while let Some(ev) = session.poll_event() {
        if events.send((tag, ConnEvent::Session(ev))).is_err() {
            return false;
        }
    }
    true
}

/// Reads what is there; true at end of stream.
fn read_some(
    transport: &mut Transport,
    sock: &mut TcpStream,
    buf: &mut [u8],
    framer: &mut LineFramer,
) -> io::Result<bool> {
    match transport {
        Transport::Plain => loop {
            match sock.read(buf) {
                Ok(0) => return Ok(true),
                Ok(n) => framer.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        },
        Transport::Tls(c) => {
            let mut eof = false;
            loop {
                match c.read_tls(sock) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                let state = c
                    .process_new_packets()
                    .map_err(|e| io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}")))?;
                if state.plaintext_bytes_to_read() > 0 {
                    drain_plaintext(c, buf, framer)?;
                }
                if state.peer_has_closed() {
                    eof = true;
                    break;
                }
            }
            drain_plaintext(c, buf, framer)?;
            Ok(eof)
        }
    }
}

fn drain_plaintext(
    c: &mut ClientConnection,
    buf: &mut [u8],
    framer: &mut LineFramer,
) -> io::Result<()> {
    loop {
        match c.reader().read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => framer.push(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            // rustls reports a close without close_notify this way; the caller sees EOF.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn flush(transport: &mut Transport, sock: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    match transport {
        Transport::Plain => {
            while !out.is_empty() {
                match sock.write(out) {
                    Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "socket closed")),
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Transport::Tls(c) => {
            while c.wants_write() {
                match c.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    //! The shell over real loopback sockets, plain and TLS, against a scripted pool peer.
    use super::*;
    use crate::quic::certs;
    use crate::upstream::session::ShareVerdict;
    use crate::work::{Extranonce, JobId};
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A pool that answers the handshake, sends a difficulty and a job, then accepts one share.
    fn serve(stream: impl Read + Write) -> Vec<String> {
        let mut reader = BufReader::new(stream);
        let mut seen = Vec::new();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
            let id = v["id"].clone();
            let method = v["method"].as_str().unwrap_or("").to_string();
            seen.push(method.clone());
            let answer = match method.as_str() {
                "mining.configure" => serde_json::json!({"id": id, "error": null,
                    "result": {"version-rolling": true, "version-rolling.mask": "1fffe000"}}),
                "mining.subscribe" => serde_json::json!({"id": id, "error": null,
                    "result": [[["mining.notify", "s1"]], "0badf00d", 8]}),
                "mining.authorize" => serde_json::json!({"id": id, "error": null, "result": true}),
                "mining.submit" => serde_json::json!({"id": id, "error": null, "result": true}),
                _ => serde_json::json!({"id": id, "error": [20, "unknown", null], "result": null}),
            };
            let w = reader.get_mut();
            w.write_all(format!("{answer}\n").as_bytes()).unwrap();
            if method == "mining.authorize" {
                w.write_all(b"{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[2]}\n")
                    .unwrap();
                w.write_all(
                    concat!(
                        r#"{"id":null,"method":"mining.notify","params":["j1","#,
                        r#""0000000000000000000000000000000000000000000000000000000000000000","#,
                        r#""01","02",[],"20000000","1d00ffff","65000000",true]}"#,
                        "\n"
                    )
                    .as_bytes(),
                )
                .unwrap();
            }
            w.flush().unwrap();
            if method == "mining.submit" {
                break;
            }
            line.clear();
        }
        seen
    }

    fn server_tls(cert: &certs::IssuedCert) -> rustls::ServerConfig {
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.cert_chain().unwrap(), cert.private_key().unwrap())
        .unwrap()
    }

    fn drive(opts: ConnectOptions) -> Vec<UpstreamEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let conn = UpstreamConn::spawn(opts, 7, tx).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (tag, ev) = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("events before the deadline");
            assert_eq!(tag, 7);
            match ev {
                ConnEvent::Connected { .. } => {}
                ConnEvent::Session(e) => {
                    if matches!(e, UpstreamEvent::Job(_)) {
                        assert!(conn.submit(
                            99,
                            UpstreamShare {
                                job_id: JobId::new("j1"),
                                extranonce2: Extranonce::from_hex("0000000000000001").unwrap(),
                                ntime: 0x6500_0000,
                                nonce: 1,
                                version_bits: None,
                            }
                        ));
                    }
                    let done = matches!(e, UpstreamEvent::ShareResult { .. });
                    got.push(e);
                    if done {
                        break;
                    }
                }
                ConnEvent::Closed { reason } => panic!("closed early: {reason}; got {got:?}"),
            }
        }
        conn.close();
        got
    }

    fn check(events: &[UpstreamEvent]) {
        assert!(matches!(
            events[0],
            UpstreamEvent::Ready {
                extranonce2_size: 8,
                ..
            }
        ));
        assert!(events
            .iter()
            .any(|e| matches!(e, UpstreamEvent::Difficulty(d) if d.value() == 2.0)));
        assert!(matches!(
            events.last(),
            Some(UpstreamEvent::ShareResult {
                ticket: 99,
                verdict: ShareVerdict::Accepted,
                ..
            })
        ));
    }

    #[test]
    fn plain_tcp_handshake_job_and_share() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || serve(listener.accept().unwrap().0));
        let url: PoolUrl = format!("stratum+tcp://127.0.0.1:{port}").parse().unwrap();
        let events = drive(ConnectOptions::new(url, UpstreamConfig::new("farm.q", "x")));
        check(&events);
        let seen = server.join().unwrap();
        assert_eq!(seen[..2], ["mining.configure", "mining.subscribe"]);
        assert!(seen.contains(&"mining.submit".to_string()));
    }

    #[test]
    fn tls_handshake_job_and_share_with_the_pool_ca_trusted() {
        let ca = certs::generate_ca("test pool CA").unwrap();
        let cert = certs::issue_core_cert(&ca, &["localhost".into()]).unwrap();
        let tls = server_tls(&cert);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let sock = listener.accept().unwrap().0;
            let conn = rustls::ServerConnection::new(Arc::new(tls)).unwrap();
            serve(rustls::StreamOwned::new(conn, sock))
        });
        let dir = std::env::temp_dir().join(format!("quarry-up-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        let url: PoolUrl = format!("stratum+ssl://localhost:{port}").parse().unwrap();
        let mut opts = ConnectOptions::new(url, UpstreamConfig::new("farm.q", "x"));
        opts.tls_roots = Some(Arc::new(load_tls_roots(Some(&ca_file)).unwrap()));
        check(&drive(opts));
        assert!(server
            .join()
            .unwrap()
            .contains(&"mining.submit".to_string()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_to_an_untrusted_pool_fails_with_a_reason() {
        let ca = certs::generate_ca("pool CA").unwrap();
        let cert = certs::issue_core_cert(&ca, &["localhost".into()]).unwrap();
        let other = certs::generate_ca("someone else").unwrap();
        let tls = server_tls(&cert);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let sock = listener.accept().unwrap().0;
            let conn = rustls::ServerConnection::new(Arc::new(tls)).unwrap();
            let _ = serve(rustls::StreamOwned::new(conn, sock));
        });
        let mut roots = RootCertStore::empty();
        roots.add(other.cert_der().unwrap()).unwrap();
        let url: PoolUrl = format!("stratum+ssl://localhost:{port}").parse().unwrap();
        let mut opts = ConnectOptions::new(url, UpstreamConfig::new("farm.q", "x"));
        opts.tls_roots = Some(Arc::new(roots));
        let (tx, rx) = crossbeam_channel::unbounded();
        let _conn = UpstreamConn::spawn(opts, 1, tx).unwrap();
        let reason = loop {
            match rx.recv_timeout(Duration::from_secs(20)).unwrap().1 {
                ConnEvent::Closed { reason } => break reason,
                ConnEvent::Session(UpstreamEvent::Ready { .. }) => panic!("trusted a stranger"),
                _ => {}
            }
        };
        assert!(reason.contains("TLS"), "{reason}");
        let _ = server.join();
    }
}
