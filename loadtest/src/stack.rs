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
}

impl StackOptions {
    pub fn new(dir: PathBuf) -> Self {
        StackOptions {
            dir,
            pool_tag: "/quarry/".into(),
            start_difficulty: 1e-5,
            min_difficulty: 1e-7,
        }
    }
}

/// A running stack; dropping it stops everything it started.
pub struct Stack {
    pub core: ManagedProcess,
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
        std::fs::write(
            &core_config,
            core_config_text(&regtest, opts, stratum, metrics),
        )?;
        let bin = find_binary("quarry-core")?;
        let config_arg = core_config.to_string_lossy().to_string();
        let mut core = ManagedProcess::spawn(
            "quarry-core",
            &bin,
            &["run", "--config", &config_arg],
            &opts.dir.join("core.log"),
        )?;
        core.wait_for_port(stratum, Duration::from_secs(30))?;
        core.wait_for_port(metrics, Duration::from_secs(10))?;
        Ok(Stack {
            core,
            core_stratum: stratum,
            core_metrics: metrics,
            core_config,
            regtest,
            dir: opts.dir.clone(),
        })
    }

    /// One line per service, naming it and its URLs.
    pub fn service_lines(&self) -> Vec<String> {
        vec![
            format!(
                "core stratum: stratum+tcp://{}  metrics: http://{}/metrics",
                self.core_stratum, self.core_metrics
            ),
            format!(
                "litecoind rpc: {}  (user {}, regtest)",
                self.regtest.rpc_url(),
                self.regtest.rpc_user()
            ),
        ]
    }

    pub fn block_count(&self) -> anyhow::Result<u64> {
        Ok(self
            .regtest
            .rpc_client()
            .call::<u64>("getblockcount", &[])?)
    }

    /// Stops the pool, then the daemons.
    pub fn stop(mut self) {
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
    )
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
