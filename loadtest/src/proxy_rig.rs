//! A `quarry-core` in proxy mode as a child process, for tests and benches of proxy mining.
//!
//! The upstreams it mines into are whatever the caller runs: the simulated upstream pool
//! (`crate::sim_pool`), or another real `quarry-core` in pool mode on litecoind regtest.

use crate::process::{free_port, ManagedProcess};
use crate::stack::spawn_core;
use anyhow::Context;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `[[proxy.upstreams]]` entry.
#[derive(Clone, Debug)]
pub struct UpstreamEntry {
    pub name: String,
    pub url: String,
    pub user: String,
    pub weight: u32,
    pub tls_ca: Option<PathBuf>,
}

impl UpstreamEntry {
    pub fn tcp(name: &str, addr: SocketAddr, user: &str) -> Self {
        UpstreamEntry {
            name: name.into(),
            url: format!("stratum+tcp://{addr}"),
            user: user.into(),
            weight: 1,
            tls_ca: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProxyCoreOptions {
    pub dir: PathBuf,
    /// `scrypt` or `sha256d`.
    pub algorithm: String,
    pub upstreams: Vec<UpstreamEntry>,
    /// `failover` or `split`.
    pub mode: String,
    pub failback_secs: f64,
    pub split_period_secs: f64,
    pub reject_alarm_after: u32,
    /// `[proxy] timeout_secs`.
    pub timeout_secs: f64,
    /// The proxy's own miners' difficulty (vardiff floor and start).
    pub start_difficulty: f64,
    pub min_difficulty: f64,
    /// Pin vardiff at the start difficulty (load tests control the share rate exactly).
    pub fixed_difficulty: bool,
    /// Run the edge gateway too (an operator PKI is made in `dir/pki`).
    pub gateway: bool,
}

impl ProxyCoreOptions {
    pub fn new(dir: PathBuf, upstreams: Vec<UpstreamEntry>) -> Self {
        ProxyCoreOptions {
            dir,
            algorithm: "scrypt".into(),
            upstreams,
            mode: "failover".into(),
            failback_secs: 5.0,
            split_period_secs: 2.0,
            reject_alarm_after: 5,
            timeout_secs: 10.0,
            start_difficulty: 1e-5,
            min_difficulty: 1e-7,
            fixed_difficulty: false,
            gateway: false,
        }
    }
}

/// A running proxy core.
pub struct ProxyCore {
    pub process: ManagedProcess,
    /// The QUIC gateway for edges, when asked for.
    pub gateway: Option<SocketAddr>,
    pub stratum: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
}

impl ProxyCore {
    pub fn start(o: &ProxyCoreOptions) -> anyhow::Result<ProxyCore> {
        std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
        let stratum: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let config = o.dir.join("proxy-core.toml");
        let mut text = config_text(o, stratum, metrics);
        let gateway = if o.gateway {
            let gw: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            crate::stack::make_pki(&o.dir.join("pki"))?;
            text.push_str(&crate::stack::gateway_config_text(&o.dir, gw));
            Some(gw)
        } else {
            None
        };
        std::fs::write(&config, text)?;
        let mut process = spawn_core(&o.dir, &config)?;
        process.wait_for_port(stratum, Duration::from_secs(30))?;
        process.wait_for_port(metrics, Duration::from_secs(10))?;
        Ok(ProxyCore {
            gateway,
            process,
            stratum,
            metrics,
            config,
        })
    }

    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        crate::process::scrape_metric(self.metrics, name)
    }

    /// The sum of a metric over the label sets whose labels contain `label` (e.g.
    /// `upstream="a"`).
    pub fn metric_with(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let body = crate::process::scrape(self.metrics)?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }

    /// The samples of metric `name`, label sets and values, for failure messages.
    pub fn metric_lines(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let body = crate::process::scrape(self.metrics)?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .map(str::to_string)
            .collect())
    }

    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(10));
    }

    pub fn log(&self) -> &Path {
        self.process.log_path()
    }
}

fn config_text(o: &ProxyCoreOptions, stratum: SocketAddr, metrics: SocketAddr) -> String {
    let max = if o.fixed_difficulty {
        o.start_difficulty
    } else {
        1e12
    };
    let min = if o.fixed_difficulty {
        o.start_difficulty
    } else {
        o.min_difficulty
    };
    let mut t = format!(
        r#"# Written by loadtest::proxy_rig.
[pool]
algorithm = "{alg}"

[proxy]
mode = "{mode}"
failback_secs = {failback}
split_period_secs = {period}
reject_alarm_after = {alarm}
retry_max_secs = 2
timeout_secs = {timeout}

[stratum]
listen = "{stratum}"
start_difficulty = {start}
min_difficulty = {min}
max_difficulty = {max}
stale_grace_secs = 30

[metrics]
listen = "{metrics}"
"#,
        alg = o.algorithm,
        mode = o.mode,
        failback = o.failback_secs,
        period = o.split_period_secs,
        alarm = o.reject_alarm_after,
        timeout = o.timeout_secs,
        start = o.start_difficulty,
    );
    for u in &o.upstreams {
        let _ = write!(
            t,
            "\n[[proxy.upstreams]]\nname = \"{}\"\nurl = \"{}\"\nuser = \"{}\"\nweight = {}\n",
            u.name, u.url, u.user, u.weight
        );
        if let Some(ca) = &u.tls_ca {
            let _ = writeln!(t, "tls_ca = \"{}\"", ca.display());
        }
    }
    t
}
