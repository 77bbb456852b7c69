//! JSON-RPC 1.0 over HTTP, the way Bitcoin-family daemons speak it, with failover.
//!
//! A daemon answers every call with `{"result": ..., "error": null | {"code", "message"}, "id"}`.
//! Bitcoin Core's HTTP server sends an RPC error with HTTP status 500 (404 for an unknown
//! method) but still with that JSON body, so the body decides, not the status. Authentication is
//! HTTP Basic, either with `rpcuser`/`rpcpassword` or with the `.cookie` file the daemon writes
//! at start (`__cookie__:<random>`), which changes on every daemon restart and is therefore read
//! afresh for each request.
//!
//! The client is blocking: the job manager runs on its own threads, and a block submission
//! should not wait behind an async runtime's scheduling. Transient failures (connection refused,
//! timeouts, HTTP 503 when the daemon's work queue is full, RPC -28 while the daemon warms up)
//! are retried with exponential backoff; [`DaemonPool`] then fails over to the next daemon.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tracing::{debug, warn};

/// Bitcoin Core `RPC_IN_WARMUP`: the daemon is still loading and asks to be retried.
pub const RPC_IN_WARMUP: i64 = -28;

/// Largest reply body we accept. A mainnet `getblocktemplate` of a full 4 MWU block with an MWEB
/// extension is a few tens of megabytes of hex at worst; anything past this is not a daemon.
const MAX_REPLY_BYTES: u64 = 256 * 1024 * 1024;

/// How the client proves itself to the daemon.
#[derive(Clone, PartialEq, Eq)]
pub enum RpcAuth {
    /// No `Authorization` header (a proxy in front of the daemon handles it).
    None,
    /// `rpcuser` / `rpcpassword` from the daemon's configuration.
    UserPass { user: String, password: String },
    /// The daemon's `.cookie` file; read on every request because it changes on daemon restart.
    CookieFile(PathBuf),
}

impl fmt::Debug for RpcAuth {
    // Credentials never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcAuth::None => f.write_str("None"),
            RpcAuth::UserPass { user, .. } => write!(f, "UserPass({user}, <redacted>)"),
            RpcAuth::CookieFile(p) => write!(f, "CookieFile({})", p.display()),
        }
    }
}

/// Everything one daemon connection needs.
#[derive(Clone, Debug)]
pub struct RpcClientConfig {
    /// `http://host:port/` (a wallet path such as `/wallet/name` may follow).
    pub url: String,
    pub auth: RpcAuth,
    /// Whole-request timeout for ordinary calls.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after the first on a transient failure.
    pub retries: u32,
    /// Delay before the second retry; doubles after each. The first retry is immediate because
    /// the commonest transient failure is a pooled keep-alive connection the daemon closed.
    pub backoff: Duration,
}

impl RpcClientConfig {
    /// Defaults suited to a daemon on the same host or LAN: 30 s calls, 2 retries.
    pub fn new(url: impl Into<String>, auth: RpcAuth) -> Self {
        RpcClientConfig {
            url: url.into(),
            auth,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            retries: 2,
            backoff: Duration::from_millis(100),
        }
    }
}

/// What went wrong with a call, naming the daemon and the method.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{url}: {method}: cannot reach the daemon: {reason}")]
    Transport {
        url: String,
        method: String,
        reason: String,
    },
    #[error(
        "{url}: {method}: the daemon refused the credentials (HTTP 401); check rpcuser/rpcpassword or the cookie file"
    )]
    Unauthorized { url: String, method: String },
    #[error("{url}: {method}: HTTP {status}: {body}")]
    Http {
        url: String,
        method: String,
        status: u16,
        body: String,
    },
    #[error("{url}: {method}: RPC error {code}: {message}")]
    Rpc {
        url: String,
        method: String,
        code: i64,
        message: String,
    },
    #[error("{url}: {method}: the answer is not a JSON-RPC reply: {reason}")]
    BadReply {
        url: String,
        method: String,
        reason: String,
    },
    #[error("{url}: {method}: the result does not have the expected shape: {source}")]
    Decode {
        url: String,
        method: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cookie file {path}: {reason}")]
    Cookie { path: PathBuf, reason: String },
    #[error("{method}: all {tried} daemons failed; last error: {last}")]
    AllDaemonsFailed {
        method: String,
        tried: usize,
        last: Box<RpcError>,
    },
    #[error("no daemon configured")]
    NoDaemons,
}

impl RpcError {
    /// True when the daemon could not be reached or could not serve us at all, so another daemon
    /// might: the cases [`DaemonPool`] fails over on. An RPC error is a real answer and is not.
    pub fn is_connection_error(&self) -> bool {
        match self {
            RpcError::Transport { .. }
            | RpcError::Unauthorized { .. }
            | RpcError::Http { .. }
            | RpcError::Cookie { .. }
            | RpcError::AllDaemonsFailed { .. }
            | RpcError::NoDaemons => true,
            RpcError::Rpc { code, .. } => *code == RPC_IN_WARMUP,
            RpcError::BadReply { .. } | RpcError::Decode { .. } => false,
        }
    }

    /// True for failures that may go away by themselves within a second.
    fn is_transient(&self) -> bool {
        match self {
            RpcError::Transport { .. } => true,
            RpcError::Http { status, .. } => *status == 503,
            RpcError::Rpc { code, .. } => *code == RPC_IN_WARMUP,
            _ => false,
        }
    }

    /// The daemon's RPC error code, when the daemon answered with one.
    pub fn rpc_code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            RpcError::AllDaemonsFailed { last, .. } => last.rpc_code(),
            _ => None,
        }
    }
}

/// Per-call settings that differ from the client's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOptions {
    pub timeout: Duration,
    /// Retry transient failures. Off for longpoll, whose timeout is its normal outcome.
    pub retry: bool,
}

impl CallOptions {
    pub fn new(timeout: Duration) -> Self {
        CallOptions {
            timeout,
            retry: true,
        }
    }

    pub fn without_retry(self) -> Self {
        CallOptions {
            retry: false,
            ..self
        }
    }
}

/// A blocking JSON-RPC client for one daemon.
pub struct RpcClient {
    config: RpcClientConfig,
    agent: ureq::Agent,
    next_id: AtomicU64,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("url", &self.config.url)
            .field("auth", &self.config.auth)
            .finish()
    }
}

impl RpcClient {
    pub fn new(config: RpcClientConfig) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .build();
        RpcClient {
            config,
            agent,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub fn config(&self) -> &RpcClientConfig {
        &self.config
    }

    /// Calls `method` with positional `params` and decodes the result into `T`.
    pub fn call<T: DeserializeOwned>(&self, method: &str, params: &[Value]) -> Result<T, RpcError> {
        self.call_with_timeout(method, params, self.config.timeout)
    }

    /// As [`RpcClient::call`] with a per-call timeout and retries.
    pub fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
        timeout: Duration,
    ) -> Result<T, RpcError> {
        self.call_with(method, params, CallOptions::new(timeout))
    }

    /// As [`RpcClient::call`] with explicit [`CallOptions`].
    pub fn call_with<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
        options: CallOptions,
    ) -> Result<T, RpcError> {
        let value = self.call_value(method, params, options)?;
        serde_json::from_value(value).map_err(|source| RpcError::Decode {
            url: self.config.url.clone(),
            method: method.to_string(),
            source,
        })
    }

    /// The raw `result` of a call, retrying transient failures with backoff when asked to.
    pub fn call_value(
        &self,
        method: &str,
        params: &[Value],
        options: CallOptions,
    ) -> Result<Value, RpcError> {
        let retries = if options.retry {
            self.config.retries
        } else {
            0
        };
        let mut attempt = 0u32;
        let mut delay = self.config.backoff;
        loop {
            match self.call_once(method, params, options.timeout) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < retries => {
                    attempt += 1;
                    debug!(url = %self.config.url, method, attempt, error = %e, "rpc: retrying");
                    if attempt > 1 {
                        std::thread::sleep(delay);
                        delay = delay.saturating_mul(2);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn call_once(
        &self,
        method: &str,
        params: &[Value],
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let mut req = self
            .agent
            .post(&self.config.url)
            .timeout(timeout)
            .set("Content-Type", "application/json");
        if let Some(header) = self.authorization()? {
            req = req.set("Authorization", &header);
        }
        let (status, response) = match req.send_json(body) {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(401, _)) => {
                return Err(RpcError::Unauthorized {
                    url: self.config.url.clone(),
                    method: method.to_string(),
                })
            }
            Err(ureq::Error::Status(status, r)) => (status, r),
            Err(ureq::Error::Transport(t)) => {
                return Err(RpcError::Transport {
                    url: self.config.url.clone(),
                    method: method.to_string(),
                    reason: t.to_string(),
                })
            }
        };
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_REPLY_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| RpcError::Transport {
                url: self.config.url.clone(),
                method: method.to_string(),
                reason: format!("reading the reply: {e}"),
            })?;
        self.parse_reply(method, status, &bytes)
    }

    /// Decides from the body first (Bitcoin Core sends RPC errors as HTTP 500 with a JSON-RPC
    /// body), and only falls back to the status when the body is not JSON-RPC.
    fn parse_reply(&self, method: &str, status: u16, bytes: &[u8]) -> Result<Value, RpcError> {
        let reply: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) if status == 200 => {
                return Err(RpcError::BadReply {
                    url: self.config.url.clone(),
                    method: method.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(RpcError::Http {
                    url: self.config.url.clone(),
                    method: method.to_string(),
                    status,
                    body: snippet(bytes),
                })
            }
        };
        let Value::Object(mut obj) = reply else {
            return Err(RpcError::BadReply {
                url: self.config.url.clone(),
                method: method.to_string(),
                reason: "not a JSON object".into(),
            });
        };
        match obj.remove("error") {
            None | Some(Value::Null) => {}
            Some(err) => {
                let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
                let message = err
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string());
                return Err(RpcError::Rpc {
                    url: self.config.url.clone(),
                    method: method.to_string(),
                    code,
                    message,
                });
            }
        }
        if status != 200 {
            return Err(RpcError::Http {
                url: self.config.url.clone(),
                method: method.to_string(),
                status,
                body: snippet(bytes),
            });
        }
        match obj.remove("result") {
            Some(v) => Ok(v),
            None => Err(RpcError::BadReply {
                url: self.config.url.clone(),
                method: method.to_string(),
                reason: "no \"result\" field".into(),
            }),
        }
    }

    fn authorization(&self) -> Result<Option<String>, RpcError> {
        let credentials = match &self.config.auth {
            RpcAuth::None => return Ok(None),
            RpcAuth::UserPass { user, password } => format!("{user}:{password}"),
            RpcAuth::CookieFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| RpcError::Cookie {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let line = text.trim();
                if !line.contains(':') {
                    return Err(RpcError::Cookie {
                        path: path.clone(),
                        reason: "expected 'user:password' on one line".into(),
                    });
                }
                line.to_string()
            }
        };
        Ok(Some(format!("Basic {}", base64(credentials.as_bytes()))))
    }
}

fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

/// RFC 4648 base64 with padding, for the Basic `Authorization` header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Several daemons for the same chain, used one at a time with failover.
///
/// Calls go to the daemon that last answered. When it cannot be reached (see
/// [`RpcError::is_connection_error`]) the next one is tried, and the first that answers becomes
/// the active daemon. An RPC error is an answer and is returned as is: asking another daemon
/// whether a block is valid would not change the verdict.
#[derive(Debug)]
pub struct DaemonPool {
    clients: Vec<RpcClient>,
    active: AtomicUsize,
}

impl DaemonPool {
    pub fn new(clients: Vec<RpcClient>) -> Result<Self, RpcError> {
        if clients.is_empty() {
            return Err(RpcError::NoDaemons);
        }
        Ok(DaemonPool {
            clients,
            active: AtomicUsize::new(0),
        })
    }

    pub fn single(client: RpcClient) -> Self {
        DaemonPool {
            clients: vec![client],
            active: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The URL of the daemon calls currently go to.
    pub fn active_url(&self) -> &str {
        self.clients[self.active_index()].url()
    }

    fn active_index(&self) -> usize {
        self.active.load(Ordering::Relaxed) % self.clients.len()
    }

    pub fn call<T: DeserializeOwned>(&self, method: &str, params: &[Value]) -> Result<T, RpcError> {
        self.with_failover(method, |c| c.call(method, params))
    }

    pub fn call_with<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
        options: CallOptions,
    ) -> Result<T, RpcError> {
        self.with_failover(method, |c| c.call_with(method, params, options))
    }

    fn with_failover<T>(
        &self,
        method: &str,
        mut f: impl FnMut(&RpcClient) -> Result<T, RpcError>,
    ) -> Result<T, RpcError> {
        let start = self.active_index();
        let n = self.clients.len();
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            match f(&self.clients[i]) {
                Ok(v) => {
                    if i != start {
                        warn!(
                            from = self.clients[start].url(),
                            to = self.clients[i].url(),
                            "daemon failover"
                        );
                        self.active.store(i, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if e.is_connection_error() => {
                    if n > 1 {
                        warn!(error = %e, "daemon unavailable; trying the next");
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let last = last.unwrap_or(RpcError::NoDaemons);
        if n == 1 {
            return Err(last);
        }
        Err(RpcError::AllDaemonsFailed {
            method: method.to_string(),
            tried: n,
            last: Box::new(last),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648 section 10 test vectors.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    /// A one-thread HTTP server answering each request with the next canned (status, body),
    /// recording the request heads it saw.
    fn fake_daemon(replies: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for (status, body) in replies {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut req_body = vec![0u8; len];
                let _ = reader.read_exact(&mut req_body);
                head.push_str(&String::from_utf8_lossy(&req_body));
                seen2.lock().expect("lock").push(head);
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, seen)
    }

    fn client(url: &str) -> RpcClient {
        let mut cfg = RpcClientConfig::new(
            url,
            RpcAuth::UserPass {
                user: "u".into(),
                password: "p".into(),
            },
        );
        cfg.backoff = Duration::from_millis(1);
        cfg.timeout = Duration::from_secs(5);
        RpcClient::new(cfg)
    }

    #[test]
    fn result_is_decoded_and_basic_auth_sent() {
        let (url, seen) = fake_daemon(vec![(200, r#"{"result":431,"error":null,"id":1}"#.into())]);
        let n: u64 = client(&url).call("getblockcount", &[]).expect("call");
        assert_eq!(n, 431);
        let seen = seen.lock().expect("lock");
        assert!(seen[0].contains("Authorization: Basic dTpw"), "{}", seen[0]);
        assert!(
            seen[0].contains(r#""method":"getblockcount""#),
            "{}",
            seen[0]
        );
    }

    #[test]
    fn rpc_error_in_http_500_body_is_reported_with_code_and_message() {
        let (url, _) = fake_daemon(vec![(
            500,
            r#"{"result":null,"error":{"code":-8,"message":"must be called with the segwit & mweb rule sets"},"id":1}"#.into(),
        )]);
        let err = client(&url)
            .call::<Value>("getblocktemplate", &[])
            .expect_err("rpc error");
        assert_eq!(err.rpc_code(), Some(-8));
        assert!(!err.is_connection_error());
        assert!(
            err.to_string()
                .contains("getblocktemplate: RPC error -8: must be called"),
            "{err}"
        );
    }

    #[test]
    fn warmup_is_retried_until_the_daemon_answers() {
        let warm =
            r#"{"result":null,"error":{"code":-28,"message":"Loading block index..."},"id":1}"#;
        let (url, seen) = fake_daemon(vec![
            (500, warm.into()),
            (500, warm.into()),
            (200, r#"{"result":"ok","error":null,"id":3}"#.into()),
        ]);
        let v: String = client(&url)
            .call("ping", &[])
            .expect("third attempt answers");
        assert_eq!(v, "ok");
        assert_eq!(seen.lock().expect("lock").len(), 3);
    }

    #[test]
    fn unauthorized_names_the_credentials() {
        let (url, _) = fake_daemon(vec![(401, String::new())]);
        let err = client(&url)
            .call::<Value>("getblockcount", &[])
            .expect_err("401");
        assert!(matches!(err, RpcError::Unauthorized { .. }));
        assert!(err.to_string().contains("rpcuser/rpcpassword"));
    }

    #[test]
    fn cookie_file_is_read_for_each_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cookie = dir.path().join(".cookie");
        std::fs::write(&cookie, "__cookie__:secret\n").expect("write");
        let (url, seen) = fake_daemon(vec![(200, r#"{"result":1,"error":null,"id":1}"#.into())]);
        let c = RpcClient::new(RpcClientConfig::new(
            &url,
            RpcAuth::CookieFile(cookie.clone()),
        ));
        let _: u64 = c.call("getblockcount", &[]).expect("call");
        assert!(seen.lock().expect("lock")[0]
            .contains(&format!("Basic {}", base64(b"__cookie__:secret"))));
        std::fs::remove_file(&cookie).expect("rm");
        let err = c
            .call::<u64>("getblockcount", &[])
            .expect_err("cookie gone");
        assert!(err.to_string().contains(".cookie"), "{err}");
    }

    #[test]
    fn pool_fails_over_to_the_next_daemon_and_stays_there() {
        // A port nobody listens on: bind, note the port, close.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}/", l.local_addr().expect("addr"))
        };
        let (live, _) = fake_daemon(vec![
            (200, r#"{"result":7,"error":null,"id":1}"#.into()),
            (200, r#"{"result":8,"error":null,"id":2}"#.into()),
        ]);
        let pool = DaemonPool::new(vec![client(&dead), client(&live)]).expect("pool");
        let n: u64 = pool.call("getblockcount", &[]).expect("failover");
        assert_eq!(n, 7);
        assert_eq!(pool.active_url(), live);
        let n: u64 = pool.call("getblockcount", &[]).expect("sticky");
        assert_eq!(n, 8);
    }

    #[test]
    fn pool_does_not_fail_over_on_an_rpc_answer() {
        let (a, _) = fake_daemon(vec![(
            500,
            r#"{"result":null,"error":{"code":-25,"message":"bad"},"id":1}"#.into(),
        )]);
        let (b, seen_b) = fake_daemon(vec![(200, r#"{"result":1,"error":null,"id":1}"#.into())]);
        let pool = DaemonPool::new(vec![client(&a), client(&b)]).expect("pool");
        let err = pool.call::<Value>("submitblock", &[]).expect_err("answer");
        assert_eq!(err.rpc_code(), Some(-25));
        assert!(seen_b.lock().expect("lock").is_empty());
    }

    #[test]
    fn empty_pool_is_refused() {
        assert!(matches!(DaemonPool::new(vec![]), Err(RpcError::NoDaemons)));
    }
}
