//! A throwaway two-node litecoind regtest network, for integration tests and the README demo.
//!
//! Two nodes because Litecoin's `getblocktemplate` refuses to work without a peer ("Litecoin
//! Core is not connected!"). Node A has the wallet and is the pool's daemon; node B only
//! connects to it. Startup mines straight past MWEB activation (height 432 on regtest), which
//! needs a twist: block 432 can only be built with an MWEB peg-in in the mempool, so the harness
//! mines to 431, sends coins to an MWEB address, then mines on. After that every template
//! carries an `mweb` field and ends with the HogEx, as on mainnet today.
//!
//! Nothing is cached between runs: ports are picked fresh (bind port 0, note it, release it),
//! each node gets a fresh data directory, and both are killed when the [`RegtestNet`] is
//! dropped. The binary is `litecoind` from `PATH`, or `$LITECOIND`.

use crate::daemon::rpc::{CallOptions, DaemonPool, RpcAuth, RpcClient, RpcClientConfig, RpcError};
use serde_json::{json, Value};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Litecoin regtest activates MWEB at height 432 (BIP9 signalling over three 144-block
/// windows, litecoin `chainparams.cpp` CRegTestParams); block 432 is the first with a HogEx.
pub const MWEB_ACTIVATION_HEIGHT: u64 = 432;

/// Blocks mined past activation during startup, so templates are steady-state MWEB ones.
const BLOCKS_PAST_ACTIVATION: u64 = 2;

const RPC_USER: &str = "quarry";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RegtestError {
    #[error(
        "cannot start '{binary}': {source} (is litecoind installed? set LITECOIND to its path)"
    )]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: litecoind exited during startup ({status}); its output: {output}")]
    Exited {
        node: &'static str,
        status: ExitStatus,
        output: String,
    },
    #[error("node {node}: {what} not ready after {waited:?}: {last}")]
    NotReady {
        node: &'static str,
        what: &'static str,
        waited: Duration,
        last: String,
    },
    #[error("node {node}: {what}: {source}")]
    Rpc {
        node: &'static str,
        what: &'static str,
        #[source]
        source: RpcError,
    },
    #[error("node {node}: {what}")]
    Unexpected { node: &'static str, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Node {
    name: &'static str,
    child: Option<Child>,
    datadir: PathBuf,
    rpc_port: u16,
    p2p_port: u16,
    client: RpcClient,
}

impl Node {
    fn rpc<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: &str,
        params: &[Value],
    ) -> Result<T, RegtestError> {
        self.client
            .call(method, params)
            .map_err(|source| RegtestError::Rpc {
                node: self.name,
                what,
                source,
            })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            debug!(node = self.name, "litecoind killed");
        }
    }

    /// Asks the node to stop and waits for it; kills it if it does not stop within 10 s.
    fn stop(&mut self) -> Result<(), RegtestError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let asked: Result<Value, _> = self.client.call_with(
            "stop",
            &[],
            CallOptions::new(Duration::from_secs(5)).without_retry(),
        );
        if let Err(e) = asked {
            warn!(node = self.name, error = %e, "stop RPC failed; killing");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(());
                }
            }
        }
    }
}

/// Two litecoind regtest nodes, connected, with MWEB active and a funded wallet on node A.
pub struct RegtestNet {
    a: Node,
    b: Node,
    password: String,
    payout_address: String,
    startup: Duration,
}

impl std::fmt::Debug for RegtestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegtestNet")
            .field("rpc_url", &self.rpc_url())
            .field("node_b_rpc_url", &self.node_b_rpc_url())
            .field("payout_address", &self.payout_address)
            .finish()
    }
}

fn free_port() -> Result<u16, RegtestError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| RegtestError::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| RegtestError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

fn binary() -> String {
    std::env::var("LITECOIND").unwrap_or_else(|_| "litecoind".to_string())
}

fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// Starts one node and waits until its RPC answers; retries with new ports when the picked
/// ones were taken between picking and binding.
fn start_node(
    name: &'static str,
    datadir: &Path,
    password: &str,
    connect_to: Option<u16>,
) -> Result<Node, RegtestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RegtestError::Io { path, source }
    };
    if datadir.exists() {
        // Only ever a directory this harness made before (`<base>/node-x`).
        std::fs::remove_dir_all(datadir).map_err(io(datadir))?;
    }
    std::fs::create_dir_all(datadir).map_err(io(datadir))?;
    let log = datadir.join("litecoind.out");
    let mut last_err = None;
    for attempt in 1..=PORT_ATTEMPTS {
        let (rpc_port, p2p_port) = (free_port()?, free_port()?);
        let out = File::create(&log).map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        let mut cmd = Command::new(binary());
        cmd.arg("-regtest")
            .arg("-server")
            .arg("-listen=1")
            .arg(format!("-bind=127.0.0.1:{p2p_port}"))
            .arg(format!("-port={p2p_port}"))
            .arg("-listenonion=0")
            .arg("-discover=0")
            .arg("-dnsseed=0")
            .arg("-rpcbind=127.0.0.1")
            .arg("-rpcallowip=127.0.0.1")
            .arg(format!("-rpcport={rpc_port}"))
            .arg(format!("-rpcuser={RPC_USER}"))
            .arg(format!("-rpcpassword={password}"))
            .arg("-fallbackfee=0.0001")
            .arg("-txindex=0")
            // A small keypool makes createwallet fast; the harness needs a handful of keys.
            .arg("-keypool=10")
            .arg("-printtoconsole=0")
            .arg(format!("-datadir={}", datadir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        if let Some(port) = connect_to {
            cmd.arg(format!("-connect=127.0.0.1:{port}"))
                .arg("-disablewallet");
        }
        // The daemons die with the thread that started them, even when the test or harness
        // process is SIGKILLed and Drop never runs.
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| RegtestError::Spawn {
            binary: binary(),
            source,
        })?;
        let mut cfg = RpcClientConfig::new(
            url(rpc_port),
            RpcAuth::UserPass {
                user: RPC_USER.into(),
                password: password.into(),
            },
        );
        // generatetoaddress of a few hundred blocks takes seconds.
        cfg.timeout = Duration::from_secs(120);
        cfg.retries = 0;
        let mut node = Node {
            name,
            child: Some(child),
            datadir: datadir.to_path_buf(),
            rpc_port,
            p2p_port,
            client: RpcClient::new(cfg),
        };
        match wait_for_rpc(&mut node, &log) {
            Ok(()) => {
                debug!(node = name, rpc_port, p2p_port, attempt, "litecoind up");
                return Ok(node);
            }
            Err(e @ RegtestError::Exited { .. }) if attempt < PORT_ATTEMPTS => {
                warn!(node = name, error = %e, "litecoind exited at start; retrying with new ports");
                node.kill();
                last_err = Some(e);
            }
            Err(e) => {
                node.kill();
                return Err(e);
            }
        }
    }
    Err(last_err.unwrap_or(RegtestError::Unexpected {
        node: name,
        what: "could not start".into(),
    }))
}

fn wait_for_rpc(node: &mut Node, log: &Path) -> Result<(), RegtestError> {
    let start = Instant::now();
    let quick = CallOptions::new(Duration::from_secs(2)).without_retry();
    loop {
        if let Some(child) = node.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                let mut output = tail(log, 2000);
                let debug_log = node.datadir.join("regtest").join("debug.log");
                if output.is_empty() {
                    output = tail(&debug_log, 2000);
                }
                return Err(RegtestError::Exited {
                    node: node.name,
                    status,
                    output,
                });
            }
        }
        match node.client.call_with::<u64>("getblockcount", &[], quick) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > STARTUP_TIMEOUT => {
                return Err(RegtestError::NotReady {
                    node: node.name,
                    what: "RPC",
                    waited: start.elapsed(),
                    last: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl RegtestNet {
    /// Starts both nodes under `base_dir` (in `node-a/` and `node-b/`) and mines past MWEB
    /// activation. Takes a few seconds, nearly all of it in `generatetoaddress`.
    pub fn start(base_dir: &Path) -> Result<RegtestNet, RegtestError> {
        Self::start_at(base_dir, true)
    }

    /// As [`RegtestNet::start`] but stops at height 430, so that the pool itself mines the last
    /// block before MWEB (431), and, after [`RegtestNet::peg_in`], the activation block 432.
    pub fn start_before_mweb(base_dir: &Path) -> Result<RegtestNet, RegtestError> {
        Self::start_at(base_dir, false)
    }

    fn start_at(base_dir: &Path, past_mweb: bool) -> Result<RegtestNet, RegtestError> {
        let t0 = Instant::now();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let password = format!("regtest-{:x}", nanos ^ u128::from(std::process::id()));
        let a = start_node("A", &base_dir.join("node-a"), &password, None)?;
        let b = start_node("B", &base_dir.join("node-b"), &password, Some(a.p2p_port))?;
        let mut net = RegtestNet {
            a,
            b,
            password,
            payout_address: String::new(),
            startup: Duration::ZERO,
        };
        info!(elapsed = ?t0.elapsed(), "regtest: both nodes answer RPC");
        net.wait_for_peer()?;
        net.setup_chain(past_mweb)?;
        net.startup = t0.elapsed();
        info!(elapsed = ?net.startup, past_mweb, payout = %net.payout_address, rpc = %net.rpc_url(), "regtest: ready");
        Ok(net)
    }

    fn wait_for_peer(&self) -> Result<(), RegtestError> {
        let start = Instant::now();
        loop {
            let n: u64 = self.a.rpc("peer count", "getconnectioncount", &[])?;
            if n >= 1 {
                return Ok(());
            }
            if start.elapsed() > PEER_TIMEOUT {
                return Err(RegtestError::NotReady {
                    node: "A",
                    what: "connection from node B",
                    waited: start.elapsed(),
                    last: format!("getconnectioncount = {n}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn setup_chain(&mut self, past_mweb: bool) -> Result<(), RegtestError> {
        let _: Value = self
            .a
            .rpc("creating the wallet", "createwallet", &[json!("quarry")])?;
        let miner: String = self.a.rpc(
            "mining address",
            "getnewaddress",
            &[json!("miner"), json!("bech32")],
        )?;
        self.payout_address = self.a.rpc(
            "payout address",
            "getnewaddress",
            &[json!("payout"), json!("bech32")],
        )?;
        let height: u64 = self.a.rpc("height", "getblockcount", &[])?;
        let t = Instant::now();
        let target = MWEB_ACTIVATION_HEIGHT - if past_mweb { 1 } else { 2 };
        let to_mine = target.saturating_sub(height);
        let _: Vec<String> = self.a.rpc(
            "mining towards MWEB activation",
            "generatetoaddress",
            &[json!(to_mine), json!(miner)],
        )?;
        debug!(blocks = to_mine, elapsed = ?t.elapsed(), "regtest: mined towards MWEB activation");
        if !past_mweb {
            return Ok(());
        }
        self.peg_in(1.0)?;
        let a = &self.a;
        let _: Vec<String> = a.rpc(
            "mining past MWEB activation",
            "generatetoaddress",
            &[json!(1 + BLOCKS_PAST_ACTIVATION), json!(miner)],
        )?;
        let info: Value = a.rpc("chain info", "getblockchaininfo", &[])?;
        let blocks = info.get("blocks").and_then(Value::as_u64).unwrap_or(0);
        let active = info
            .pointer("/softforks/mweb/active")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if blocks < MWEB_ACTIVATION_HEIGHT || !active {
            return Err(RegtestError::Unexpected {
                node: "A",
                what: format!("MWEB not active after mining: height {blocks}, softforks.mweb.active = {active}"),
            });
        }
        let gbt: Value = a.rpc(
            "template after MWEB activation",
            "getblocktemplate",
            &crate::daemon::template::BlockTemplate::request_params(None),
        )?;
        if gbt.get("mweb").is_none() {
            return Err(RegtestError::Unexpected {
                node: "A",
                what: format!(
                    "getblocktemplate at height {} has no mweb field",
                    blocks + 1
                ),
            });
        }
        Ok(())
    }

    /// Moves `amount` LTC of node A's wallet into the MWEB; returns the txid. Block 432 can
    /// only be built with such a peg-in in the mempool: the first HogEx must carry coins into
    /// the extension block. Litecoind accepts it once the next block is MWEB's (tip 431).
    pub fn peg_in(&self, amount: f64) -> Result<String, RegtestError> {
        let addr: String = self.a.rpc(
            "MWEB address",
            "getnewaddress",
            &[json!("pegin"), json!("mweb")],
        )?;
        self.a.rpc(
            "MWEB peg-in",
            "sendtoaddress",
            &[json!(addr), json!(amount)],
        )
    }

    /// Node A's RPC URL: the pool's daemon.
    pub fn rpc_url(&self) -> String {
        url(self.a.rpc_port)
    }

    pub fn node_b_rpc_url(&self) -> String {
        url(self.b.rpc_port)
    }

    pub fn rpc_user(&self) -> &str {
        RPC_USER
    }

    pub fn rpc_password(&self) -> &str {
        &self.password
    }

    pub fn rpc_auth(&self) -> RpcAuth {
        RpcAuth::UserPass {
            user: RPC_USER.into(),
            password: self.password.clone(),
        }
    }

    /// A client for node A with default settings.
    pub fn rpc_client(&self) -> RpcClient {
        RpcClient::new(RpcClientConfig::new(self.rpc_url(), self.rpc_auth()))
    }

    /// A one-daemon pool on node A, as the job manager takes it.
    pub fn daemon_pool(&self) -> DaemonPool {
        DaemonPool::single(self.rpc_client())
    }

    /// A bech32 address of node A's wallet that nothing else pays to.
    pub fn payout_address(&self) -> &str {
        &self.payout_address
    }

    /// Wall time from `start` until MWEB was active and templates carried it.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Stops both nodes gracefully (falling back to kill). Dropping kills them instead.
    pub fn stop(&mut self) -> Result<(), RegtestError> {
        self.b.stop()?;
        self.a.stop()
    }
}

impl Drop for RegtestNet {
    fn drop(&mut self) {
        self.b.kill();
        self.a.kill();
    }
}
