//! `quarry-core` configuration (TOML). Every key is documented in `deploy/core.example.toml`.
//! Unknown keys are errors; every error names the file, the key and the reason.

use crate::daemon::rpc::{RpcAuth, RpcClientConfig};
use crate::gateway::GatewayConfig;
use crate::jobs::JobManagerConfig;
use crate::proxy::{ProxyConfig, SelectionMode, UpstreamSpec};
use edge::config::{load_toml, ConfigError, LimitsSection, StratumSection};
use edge::server::ServerConfig;
use edge::telemetry::LogFormat;
use relay::pow::PowAlgorithm;
use relay::upstream::PoolUrl;
use relay::work::ExtranonceLayout;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfigFile {
    pub pool: PoolSection,
    #[serde(default)]
    pub daemons: Vec<DaemonSection>,
    #[serde(default)]
    pub jobs: JobsSection,
    #[serde(default)]
    pub stratum: StratumSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
    /// Remote edges; no section, no gateway.
    pub gateway: Option<GatewaySection>,
    /// Proxy mining: work from upstream pools instead of daemons.
    pub proxy: Option<ProxySection>,
}

/// `[proxy]`: mine for upstream pools (see `core_pool::proxy`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// `failover` (priority order) or `split` (by weight).
    #[serde(default = "default_proxy_mode")]
    pub mode: String,
    #[serde(default = "default_failback")]
    pub failback_secs: f64,
    #[serde(default = "default_split_period")]
    pub split_period_secs: f64,
    #[serde(default = "default_reject_alarm")]
    pub reject_alarm_after: u32,
    #[serde(default = "default_demote")]
    pub demote_secs: u64,
    /// Ask upstreams for BIP310 version rolling (our miners roll inside the granted mask).
    #[serde(default = "default_true")]
    pub version_rolling: bool,
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: f64,
    /// Connect, handshake and share-answer timeout: an upstream silent this long on a
    /// forwarded share is taken to be hung and loses the work.
    #[serde(default = "default_upstream_timeout")]
    pub timeout_secs: f64,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Defaults to the URL's host:port.
    #[serde(default)]
    pub name: String,
    pub url: String,
    pub user: String,
    #[serde(default = "default_upstream_password")]
    pub password: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub tls_ca: Option<PathBuf>,
}

fn default_proxy_mode() -> String {
    "failover".into()
}
fn default_failback() -> f64 {
    30.0
}
fn default_split_period() -> f64 {
    10.0
}
fn default_reject_alarm() -> u32 {
    5
}
fn default_demote() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_retry_max() -> f64 {
    30.0
}
fn default_upstream_timeout() -> f64 {
    10.0
}
fn default_upstream_password() -> String {
    "x".into()
}
fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// `scrypt` (Litecoin, Dogecoin) or `sha256d` (Bitcoin).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Required in pool mode (with daemons); unused in proxy mode.
    #[serde(default)]
    pub payout_address: String,
    #[serde(default = "default_tag")]
    pub pool_tag: String,
    /// This shard's byte in every extranonce1 (0-255); shards must differ.
    #[serde(default)]
    pub shard_id: u8,
    /// Bytes of extranonce2 miners roll (2-8). A pool that other proxies mine into (Quarry in
    /// proxy mode among them) should offer 8: they carve their own prefix out of it.
    #[serde(default = "default_extranonce2_size")]
    pub extranonce2_size: usize,
}

fn default_extranonce2_size() -> usize {
    4
}

fn default_algorithm() -> String {
    "scrypt".into()
}
fn default_tag() -> String {
    "/quarry/".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub cookie_file: Option<PathBuf>,
    #[serde(default = "default_rpc_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_rpc_timeout() -> u64 {
    30
}
fn default_retries() -> u32 {
    2
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// A fresh job (same block, new ntime/mempool) at least this often.
    pub refresh_secs: u64,
    /// getblocktemplate polling interval, the fallback when longpoll is off or failing.
    pub poll_ms: u64,
    pub longpoll: bool,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            refresh_secs: 30,
            poll_ms: 1000,
            longpoll: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Prometheus endpoint (`/metrics`).
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
        }
    }
}

/// `[gateway]`: the QUIC endpoint remote edges connect to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    /// The core's certificate (PEM), from `quarry-core certs core`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The operator CA certificate edges' certificates must chain to (PEM).
    pub ca: PathBuf,
    /// The shard journal and the edge lease map.
    pub journal_dir: PathBuf,
    #[serde(default = "default_audit_per_mille")]
    pub audit_per_mille: u16,
    #[serde(default = "default_max_batch_shares")]
    pub max_batch_shares: u16,
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u32,
    #[serde(default = "default_gateway_ban_secs")]
    pub ban_secs: u64,
}

fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4444))
}
fn default_audit_per_mille() -> u16 {
    20
}
fn default_max_batch_shares() -> u16 {
    1000
}
fn default_max_batch_delay_ms() -> u32 {
    200
}
fn default_gateway_ban_secs() -> u64 {
    600
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
}

/// A checked configuration, ready to run.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub file: PathBuf,
    pub algorithm: PowAlgorithm,
    pub shard_id: u8,
    pub daemons: Vec<RpcClientConfig>,
    pub jobs: JobManagerConfig,
    pub server: ServerConfig,
    pub layout: ExtranonceLayout,
    pub metrics_listen: SocketAddr,
    pub log_format: LogFormat,
    /// The edge gateway, when `[gateway]` is present.
    pub gateway: Option<GatewayConfig>,
    /// Proxy mining, when `[proxy]` is present (then there are no daemons).
    pub proxy: Option<ProxyConfig>,
}

fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

impl CoreConfig {
    pub fn load(file: &Path) -> Result<CoreConfig, ConfigError> {
        let raw: CoreConfigFile = load_toml(file)?;
        Self::from_file(file, raw)
    }

    pub fn from_file(file: &Path, raw: CoreConfigFile) -> Result<CoreConfig, ConfigError> {
        let algorithm: PowAlgorithm = raw
            .pool
            .algorithm
            .parse()
            .map_err(|e: String| invalid(file, "pool.algorithm", e))?;
        let proxy_mode = raw.proxy.is_some();
        if !proxy_mode && raw.pool.payout_address.trim().is_empty() {
            return Err(invalid(file, "pool.payout_address", "must not be empty"));
        }
        if !(2..=8).contains(&raw.pool.extranonce2_size) {
            return Err(invalid(
                file,
                "pool.extranonce2_size",
                format!("{} is outside 2..=8", raw.pool.extranonce2_size),
            ));
        }
        if raw.pool.pool_tag.len() > 40 {
            return Err(invalid(
                file,
                "pool.pool_tag",
                "at most 40 bytes (the coinbase scriptSig is limited to 100 bytes)",
            ));
        }
        if raw.daemons.is_empty() && !proxy_mode {
            return Err(invalid(
                file,
                "daemons",
                "at least one [[daemons]] entry is needed (or a [proxy] section)",
            ));
        }
        if !raw.daemons.is_empty() && proxy_mode {
            return Err(invalid(
                file,
                "proxy",
                "a core takes work either from [[daemons]] or from [proxy] upstreams, not both",
            ));
        }
        let mut daemons = Vec::new();
        for (i, d) in raw.daemons.iter().enumerate() {
            let key = |k: &str| format!("daemons[{i}].{k}");
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return Err(invalid(
                    file,
                    &key("url"),
                    format!("'{}' must start with http://", d.url),
                ));
            }
            let auth = match (&d.user, &d.password, &d.cookie_file) {
                (Some(u), Some(p), None) => RpcAuth::UserPass {
                    user: u.clone(),
                    password: p.clone(),
                },
                (None, None, Some(c)) => RpcAuth::CookieFile(c.clone()),
                (None, None, None) => RpcAuth::None,
                (Some(_), None, _) => {
                    return Err(invalid(
                        file,
                        &key("password"),
                        "user is set but password is not",
                    ))
                }
                (None, Some(_), _) => {
                    return Err(invalid(
                        file,
                        &key("user"),
                        "password is set but user is not",
                    ))
                }
                (_, _, Some(_)) => {
                    return Err(invalid(
                        file,
                        &key("cookie_file"),
                        "use either user/password or cookie_file, not both",
                    ))
                }
            };
            let mut c = RpcClientConfig::new(d.url.clone(), auth);
            c.timeout = Duration::from_secs(d.timeout_secs.max(1));
            c.retries = d.retries;
            daemons.push(c);
        }
        let layout = ExtranonceLayout {
            extranonce2_len: raw.pool.extranonce2_size,
            ..ExtranonceLayout::default()
        };
        // Lease 0 of this shard is the core's own Stratum port; remote edges get 1..=255.
        let prefix = layout
            .edge_prefix(raw.pool.shard_id as u64, 0)
            .map_err(|e| invalid(file, "pool.shard_id", e.to_string()))?;
        let server = edge::config::server_config(
            file,
            &raw.stratum,
            &raw.limits,
            algorithm,
            layout,
            prefix,
        )?;
        let mut jobs = JobManagerConfig::new(raw.pool.payout_address.clone(), raw.pool.pool_tag);
        jobs.extranonce_len = layout.total_len();
        jobs.refresh_interval = Duration::from_secs(raw.jobs.refresh_secs.max(1));
        jobs.poll_interval = Duration::from_millis(raw.jobs.poll_ms.max(50));
        jobs.longpoll = raw.jobs.longpoll;
        let gateway = match raw.gateway {
            None => None,
            Some(g) => Some(gateway_config(
                file,
                g,
                raw.pool.shard_id,
                layout,
                algorithm,
            )?),
        };
        let proxy = match raw.proxy {
            None => None,
            Some(p) => Some(proxy_config(file, p, algorithm, layout)?),
        };
        Ok(CoreConfig {
            proxy,
            file: file.to_path_buf(),
            algorithm,
            shard_id: raw.pool.shard_id,
            daemons,
            jobs,
            server,
            layout,
            metrics_listen: raw.metrics.listen,
            log_format: raw.log.format,
            gateway,
        })
    }
}

fn proxy_config(
    file: &Path,
    p: ProxySection,
    algorithm: PowAlgorithm,
    layout: ExtranonceLayout,
) -> Result<ProxyConfig, ConfigError> {
    if p.upstreams.is_empty() {
        return Err(invalid(
            file,
            "proxy.upstreams",
            "at least one [[proxy.upstreams]] entry is needed",
        ));
    }
    let mode = match p.mode.as_str() {
        "failover" => SelectionMode::Failover,
        "split" => SelectionMode::Split,
        other => {
            return Err(invalid(
                file,
                "proxy.mode",
                format!("'{other}' is not one of failover, split"),
            ))
        }
    };
    let secs = |key: &str, v: f64| -> Result<Duration, ConfigError> {
        if v.is_finite() && (0.0..=86_400.0).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(invalid(
                file,
                key,
                format!("{v} is not a number of seconds from 0 to 86400"),
            ))
        }
    };
    let mut upstreams = Vec::new();
    for (i, u) in p.upstreams.into_iter().enumerate() {
        let key = |k: &str| format!("proxy.upstreams[{i}].{k}");
        let url: PoolUrl = u
            .url
            .parse()
            .map_err(|e: relay::upstream::PoolUrlError| invalid(file, &key("url"), e.reason))?;
        if u.user.trim().is_empty() {
            return Err(invalid(file, &key("user"), "must not be empty"));
        }
        if mode == SelectionMode::Split && u.weight == 0 {
            return Err(invalid(
                file,
                &key("weight"),
                "must be at least 1 in split mode",
            ));
        }
        if let Some(ca) = &u.tls_ca {
            if !url.tls {
                return Err(invalid(
                    file,
                    &key("tls_ca"),
                    "set for a stratum+tcp:// URL (TLS roots are for stratum+ssl://)",
                ));
            }
            if !ca.exists() {
                return Err(invalid(
                    file,
                    &key("tls_ca"),
                    format!("{} does not exist", ca.display()),
                ));
            }
        }
        upstreams.push(UpstreamSpec {
            name: if u.name.is_empty() {
                format!("{}:{}", url.host, url.port)
            } else {
                u.name
            },
            url,
            user: u.user,
            password: u.password,
            weight: u.weight,
            tls_ca: u.tls_ca,
        });
    }
    let mut c = ProxyConfig::new(upstreams, algorithm);
    c.mode = mode;
    c.failback = secs("proxy.failback_secs", p.failback_secs)?;
    c.split_period = secs("proxy.split_period_secs", p.split_period_secs)?;
    if c.split_period < Duration::from_millis(100) {
        return Err(invalid(
            file,
            "proxy.split_period_secs",
            "must be at least 0.1",
        ));
    }
    c.retry_max = secs("proxy.retry_max_secs", p.retry_max_secs)?.max(c.retry_min);
    let timeout = secs("proxy.timeout_secs", p.timeout_secs)?;
    if timeout < Duration::from_millis(100) {
        return Err(invalid(file, "proxy.timeout_secs", "must be at least 0.1"));
    }
    c.connect_timeout = timeout;
    c.handshake_timeout = timeout;
    c.answer_timeout = timeout;
    c.block_answer_timeout = timeout;
    c.reject_alarm_after = p.reject_alarm_after.max(1);
    c.demote_for = Duration::from_secs(p.demote_secs);
    c.layout = layout;
    c.version_rolling = p
        .version_rolling
        .then_some(relay::work::VersionMask::BIP320);
    Ok(c)
}

fn gateway_config(
    file: &Path,
    g: GatewaySection,
    shard_id: u8,
    layout: ExtranonceLayout,
    algorithm: PowAlgorithm,
) -> Result<GatewayConfig, ConfigError> {
    if g.audit_per_mille > 1000 {
        return Err(invalid(
            file,
            "gateway.audit_per_mille",
            format!("{} is over 1000 (every share)", g.audit_per_mille),
        ));
    }
    if g.max_batch_shares == 0 {
        return Err(invalid(
            file,
            "gateway.max_batch_shares",
            "must be at least 1",
        ));
    }
    for (key, path) in [
        ("gateway.cert", &g.cert),
        ("gateway.key", &g.key),
        ("gateway.ca", &g.ca),
        ("gateway.journal_dir", &g.journal_dir),
    ] {
        if path.as_os_str().is_empty() {
            return Err(invalid(file, key, "must not be empty"));
        }
    }
    let mut c = GatewayConfig::new(g.listen, g.cert, g.key, g.ca, g.journal_dir);
    c.policies.audit_per_mille = g.audit_per_mille;
    c.policies.max_batch_shares = g.max_batch_shares;
    c.policies.max_batch_delay_ms = g.max_batch_delay_ms;
    c.ban = Duration::from_secs(g.ban_secs);
    c.shard_id = shard_id;
    c.layout = layout;
    c.algorithm = algorithm;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<CoreConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("quarry-core-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("c{n}.toml"));
        std::fs::write(&path, text).unwrap();
        CoreConfig::load(&path)
    }

    const OK: &str = r#"
[pool]
payout_address = "rltc1qexample"
[[daemons]]
url = "http://127.0.0.1:19443"
user = "u"
password = "p"
"#;

    #[test]
    fn minimal_config_loads() {
        let c = load(OK).unwrap();
        assert_eq!(c.algorithm, PowAlgorithm::Scrypt);
        assert_eq!(c.daemons.len(), 1);
    }

    #[test]
    fn example_config_in_deploy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/core.example.toml");
        let c = CoreConfig::load(&path).unwrap();
        assert_eq!(c.server.max_connections, 15_000);
        let g = c.gateway.expect("the example enables the gateway");
        assert_eq!(g.listen, SocketAddr::from(([0, 0, 0, 0], 4444)));
        assert_eq!(g.policies.audit_per_mille, 20);
        assert_eq!(g.policies.max_batch_shares, 1000);
        assert_eq!(g.policies.max_batch_delay_ms, 200);
        assert_eq!(g.ban, Duration::from_secs(600));
    }

    #[test]
    fn proxy_example_config_in_deploy_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/core-proxy.example.toml");
        let c = CoreConfig::load(&path).unwrap();
        let p = c.proxy.expect("the example is in proxy mode");
        assert!(c.daemons.is_empty());
        assert_eq!(p.upstreams.len(), 2);
        assert_eq!(p.upstreams[0].name, "main");
        assert!(p.upstreams[1].url.tls);
        assert_eq!(p.upstreams[0].weight, 70);
        assert_eq!(p.mode, SelectionMode::Failover);
        assert_eq!(p.failback, Duration::from_secs(30));
        assert_eq!(p.layout.total_len(), 8);
    }

    const PROXY: &str = r#"
[pool]
[proxy]
[[proxy.upstreams]]
url = "stratum+tcp://127.0.0.1:3333"
user = "farm.q"
"#;

    #[test]
    fn proxy_section_errors_name_their_key() {
        let c = load(PROXY).unwrap();
        assert_eq!(c.proxy.unwrap().upstreams[0].name, "127.0.0.1:3333");
        let e = load(&PROXY.replace("stratum+tcp://127.0.0.1:3333", "http://x:1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("proxy.upstreams[0].url") && e.contains("stratum+tcp://"),
            "{e}"
        );
        let e = load(&PROXY.replace("[proxy]", "[proxy]\nmode = \"random\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.mode") && e.contains("random"), "{e}");
        let e = load(&PROXY.replace("user = \"farm.q\"", "user = \"\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.upstreams[0].user"), "{e}");
        let e = load(&format!("{PROXY}tls_ca = \"/etc/hosts\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("proxy.upstreams[0].tls_ca") && e.contains("stratum+ssl"),
            "{e}"
        );
        let e = load("[pool]\n[proxy]\n").unwrap_err().to_string();
        assert!(e.contains("proxy.upstreams"), "{e}");
        let both = format!(
            "{OK}\n[proxy]\n[[proxy.upstreams]]\nurl = \"stratum+tcp://h:1\"\nuser = \"u\"\n"
        );
        let e = load(&both).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let e = load(&PROXY.replace("[pool]", "[pool]\nextranonce2_size = 12"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.extranonce2_size"), "{e}");
    }

    #[test]
    fn gateway_section_is_optional_and_checked() {
        assert!(load(OK).unwrap().gateway.is_none());
        let gw = "\n[gateway]\ncert = \"c.crt\"\nkey = \"c.key\"\n\
                  ca = \"ca.crt\"\njournal_dir = \"j\"\n";
        let c = load(&format!("{OK}{gw}")).unwrap();
        let g = c.gateway.unwrap();
        assert_eq!(g.policies.audit_per_mille, 20);
        assert_eq!(g.shard_id, 0);
        let e = load(&format!("{OK}{gw}audit_per_mille = 1001\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.audit_per_mille"), "{e}");
        let e = load(&format!("{OK}{gw}max_batch_shares = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.max_batch_shares"), "{e}");
        let e = load(&format!("{OK}\n[gateway]\ncert = \"c\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key") && e.contains(".toml"), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = load("[pool]\npayout_address = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `daemons`: at least one"), "{e}");
        let e = load(&OK.replace("user = \"u\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("daemons[0].user"), "{e}");
        let e = load(&OK.replace("[pool]", "[pool]\nalgorithm = \"x11\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.algorithm") && e.contains("x11"), "{e}");
        let e = load(&format!("{OK}\n[stratum]\nlisten = \"nowhere\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") && e.contains(".toml"), "{e}");
        let e = load(&format!("{OK}\n[metrics]\nlisten_addr = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
    }
}
