//! The whole local stack on one machine: litecoind (regtest) → quarry-core → miners.
//!
//! Used by `quarry-loadtest stack` (the README's main command) and by the integration tests,
//! so what a user runs and what CI checks are the same code.

use crate::process::{find_binary, free_port, ManagedProcess};
use anyhow::Context;
use core_pool::regtest::RegtestNet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of a stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// A fresh folder for every file the stack writes (daemon data, configs, logs).
    pub dir: PathBuf,
    pub pool_tag: String,
    /// Starting pool difficulty. Regtest's network difficulty (scrypt convention) is about
    /// 3e-5, so shares at or above it are all blocks.
    pub start_difficulty: f64,
    pub min_difficulty: f64,
    /// Vardiff ceiling of the edge (set it to `start_difficulty` to pin the difficulty).
    pub max_difficulty: f64,
    /// Proof of work of the edge's miners: `scrypt` (the regtest stack) or `sha256d`.
    pub algorithm: String,
    /// Also run a quarry-edge connected to the core's gateway over QUIC.
    pub edge: bool,
    /// Route the edge's QUIC through this address instead of straight to the gateway (a link
    /// impairment proxy the caller runs); `None` connects directly.
    pub edge_uplink_via: Option<SocketAddr>,
    /// Fixed gateway port (0 = pick a free one); needed when a proxy must know it in advance.
    pub gateway_port: u16,
    /// Bytes of extranonce2 the core's miners roll (`[pool] extranonce2_size`); 8 lets a Quarry
    /// in proxy mode mine into this core.
    pub extranonce2_size: usize,
}

impl StackOptions {
    pub fn new(dir: PathBuf) -> Self {
        StackOptions {
            dir,
            pool_tag: "/quarry/".into(),
            start_difficulty: 1e-5,
            min_difficulty: 1e-7,
            max_difficulty: 1e12,
            algorithm: "scrypt".into(),
            edge: false,
            edge_uplink_via: None,
            gateway_port: 0,
            extranonce2_size: 4,
        }
    }
}

/// A running edge and where it serves.
pub struct EdgeProc {
    pub process: ManagedProcess,
    pub stratum: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
}

/// A running stack; dropping it stops everything it started.
pub struct Stack {
    pub edge: Option<EdgeProc>,
    pub core: ManagedProcess,
    pub gateway: Option<SocketAddr>,
    pub core_stratum: SocketAddr,
    pub core_metrics: SocketAddr,
    pub core_config: PathBuf,
    // Dropped last: the daemons outlive the pool.
    pub regtest: RegtestNet,
    pub dir: PathBuf,
}

impl Stack {
    pub fn start(opts: &StackOptions) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        tracing::info!(dir = %opts.dir.display(), "starting litecoind (regtest, two nodes) and maturing past MWEB activation");
        let regtest = RegtestNet::start(&opts.dir.join("litecoind"))
            .context("starting litecoind in regtest")?;
        tracing::info!(
            took = ?regtest.startup_time(),
            rpc = %regtest.rpc_url(),
            "litecoind ready"
        );
        let stratum: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let core_config = opts.dir.join("core.toml");
        let mut text = core_config_text(&regtest, opts, stratum, metrics);
        let gateway = if opts.edge {
            let port = if opts.gateway_port != 0 {
                opts.gateway_port
            } else {
                free_port()?
            };
            let gw: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            make_pki(&opts.dir.join("pki"))?;
            text.push_str(&gateway_config_text(&opts.dir, gw));
            Some(gw)
        } else {
            None
        };
        std::fs::write(&core_config, text)?;
        let mut core = spawn_core(&opts.dir, &core_config)?;
        core.wait_for_port(stratum, Duration::from_secs(30))?;
        core.wait_for_port(metrics, Duration::from_secs(10))?;
        let edge = match gateway {
            Some(gw) => Some(start_edge(
                &opts.dir,
                opts.edge_uplink_via.unwrap_or(gw),
                opts,
            )?),
            None => None,
        };
        Ok(Stack {
            edge,
            gateway,
            core,
            core_stratum: stratum,
            core_metrics: metrics,
            core_config,
            regtest,
            dir: opts.dir.clone(),
        })
    }

    /// Kills the core with SIGKILL and starts it again with the same configuration.
    pub fn restart_core_hard(&mut self) -> anyhow::Result<()> {
        self.core.kill();
        self.core = spawn_core(&self.dir, &self.core_config)?;
        self.core
            .wait_for_port(self.core_stratum, Duration::from_secs(30))?;
        Ok(())
    }

    /// Kills the edge with SIGKILL and starts it again with the same configuration and spool.
    pub fn restart_edge_hard(&mut self) -> anyhow::Result<()> {
        let e = self
            .edge
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("this stack has no edge"))?;
        e.process.kill();
        e.process = spawn_edge(&self.dir, &e.config)?;
        e.process
            .wait_for_port(e.stratum, Duration::from_secs(60))?;
        Ok(())
    }

    /// Every share the core credited (from its journal), one JSON object each.
    pub fn credited_shares(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let bin = find_binary("quarry-core")?;
        let out = std::process::Command::new(bin)
            .args(["journal-dump", "--dir"])
            .arg(self.dir.join("journal"))
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "journal-dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("journal-dump line"))
            .collect()
    }

    /// One line per service, naming it and its URLs.
    pub fn service_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(e) = &self.edge {
            lines.push(format!(
                "edge stratum: stratum+tcp://{}  metrics: http://{}/metrics",
                e.stratum, e.metrics
            ));
        }
        lines.extend([
            format!(
                "core stratum: stratum+tcp://{}  metrics: http://{}/metrics",
                self.core_stratum, self.core_metrics
            ),
            format!(
                "litecoind rpc: {}  (user {}, regtest)",
                self.regtest.rpc_url(),
                self.regtest.rpc_user()
            ),
        ]);
        if let Some(gw) = self.gateway {
            lines.insert(lines.len() - 1, format!("core gateway (QUIC, mTLS): {gw}"));
        }
        lines
    }

    pub fn block_count(&self) -> anyhow::Result<u64> {
        Ok(self
            .regtest
            .rpc_client()
            .call::<u64>("getblockcount", &[])?)
    }

    /// Checks that the block at `height` is this stack's pool's: its coinbase scriptSig carries
    /// `tag` and an output pays the pool's payout address.
    pub fn check_pool_coinbase(&self, height: u64, tag: &str) -> anyhow::Result<()> {
        use serde_json::{json, Value};
        let rpc = self.regtest.rpc_client();
        let hash: String = rpc.call("getblockhash", &[json!(height)])?;
        let block: Value = rpc.call("getblock", &[json!(hash), json!(2)])?;
        let coinbase = &block["tx"][0];
        let script_sig = coinbase["vin"][0]["coinbase"].as_str().unwrap_or("");
        anyhow::ensure!(
            script_sig.contains(&hex::encode(tag)),
            "block {height}: coinbase scriptSig {script_sig} lacks the pool tag {tag}"
        );
        let payout = self.regtest.payout_address().to_string();
        let pays = coinbase["vout"].as_array().is_some_and(|outs| {
            outs.iter().any(|o| {
                o["scriptPubKey"]["address"].as_str() == Some(payout.as_str())
                    || o["scriptPubKey"]["addresses"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(payout.as_str())))
            })
        });
        anyhow::ensure!(
            pays,
            "block {height}: coinbase does not pay {payout}: {coinbase}"
        );
        Ok(())
    }

    /// Stops the edge, the pool, then the daemons.
    pub fn stop(mut self) {
        if let Some(e) = self.edge.as_mut() {
            e.process.stop(Duration::from_secs(10));
        }
        self.core.stop(Duration::from_secs(10));
        let _ = self.regtest.stop();
    }
}

fn core_config_text(
    regtest: &RegtestNet,
    opts: &StackOptions,
    stratum: SocketAddr,
    metrics: SocketAddr,
) -> String {
    format!(
        r#"# Written by quarry-loadtest stack.
[pool]
algorithm = "scrypt"
payout_address = "{payout}"
pool_tag = "{tag}"
extranonce2_size = {e2}

[[daemons]]
url = "{url}"
user = "{user}"
password = "{password}"

[jobs]
refresh_secs = 30
poll_ms = 500

[stratum]
listen = "{stratum}"
start_difficulty = {start}
min_difficulty = {min}
stale_grace_secs = 30

[limits]
max_connections = 15000

[metrics]
listen = "{metrics}"
"#,
        payout = regtest.payout_address(),
        tag = opts.pool_tag,
        url = regtest.rpc_url(),
        user = regtest.rpc_user(),
        password = regtest.rpc_password(),
        start = opts.start_difficulty,
        min = opts.min_difficulty,
        e2 = opts.extranonce2_size,
    )
}

pub(crate) fn spawn_core(dir: &Path, config: &Path) -> anyhow::Result<ManagedProcess> {
    let bin = find_binary("quarry-core")?;
    let config_arg = config.to_string_lossy().to_string();
    // Appends, so a restarted core's log follows the killed one's.
    ManagedProcess::spawn(
        "quarry-core",
        &bin,
        &["run", "--config", &config_arg],
        &dir.join(format!("core-{}.log", now_ms())),
    )
}

fn spawn_edge(dir: &Path, config: &Path) -> anyhow::Result<ManagedProcess> {
    let bin = find_binary("quarry-edge")?;
    let config_arg = config.to_string_lossy().to_string();
    ManagedProcess::spawn(
        "quarry-edge",
        &bin,
        &["run", "--config", &config_arg],
        &dir.join(format!("edge-{}.log", now_ms())),
    )
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The operator PKI for the stack: CA, core certificate for 127.0.0.1/localhost, edge `farm-1`.
pub fn make_pki(dir: &Path) -> anyhow::Result<()> {
    use relay::quic::certs;
    let ca = certs::generate_ca("Quarry stack CA")?;
    ca.write(dir)?;
    certs::issue_core_cert(&ca, &["localhost".into(), "127.0.0.1".into()])?.write(dir, "core")?;
    certs::issue_edge_cert(&ca, "farm-1")?.write(dir, "farm-1")?;
    Ok(())
}

pub fn gateway_config_text(dir: &Path, gw: SocketAddr) -> String {
    let pki = dir.join("pki");
    format!(
        r#"
[gateway]
listen = "{gw}"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
journal_dir = "{journal}"
max_batch_shares = 1000
max_batch_delay_ms = 200
"#,
        cert = pki.join("core.crt").display(),
        key = pki.join("core.key").display(),
        ca = pki.join("ca.crt").display(),
        journal = dir.join("journal").display(),
    )
}

/// Starts a `quarry-edge` (edge id `farm-1`, the PKI of [`make_pki`] in `dir/pki`) connected to
/// the gateway at `core`.
pub fn start_edge(dir: &Path, core: SocketAddr, opts: &StackOptions) -> anyhow::Result<EdgeProc> {
    let stratum: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let pki = dir.join("pki");
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Written by quarry-loadtest stack.
[edge]
id = "farm-1"
algorithm = "{algorithm}"
spool_dir = "{spool}"

[core]
endpoints = ["{core}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[stratum]
listen = "{stratum}"
start_difficulty = {start}
min_difficulty = {min}
max_difficulty = {max}

[metrics]
listen = "{metrics}"
"#,
            algorithm = opts.algorithm,
            max = opts.max_difficulty,
            spool = dir.join("spool").display(),
            ca = pki.join("ca.crt").display(),
            cert = pki.join("farm-1.crt").display(),
            key = pki.join("farm-1.key").display(),
            start = opts.start_difficulty,
            min = opts.min_difficulty,
        ),
    )?;
    let mut process = spawn_edge(dir, &config)?;
    process.wait_for_port(stratum, Duration::from_secs(60))?;
    Ok(EdgeProc {
        process,
        stratum,
        metrics,
        config,
    })
}

/// A fresh folder under the system temp dir.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

/// Removes a stack folder (best effort).
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
