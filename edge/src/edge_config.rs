//! `quarry-edge` configuration (TOML); every key is documented in `deploy/edge.example.toml`.

use crate::config::{load_toml, server_config, ConfigError, LimitsSection, StratumSection};
use crate::fallback::FallbackConfig;
use crate::server::ServerConfig;
use crate::telemetry::LogFormat;
use crate::uplink::CoreEndpoint;
use relay::pow::PowAlgorithm;
use relay::upstream::{ConnectOptions, PoolUrl, UpstreamConfig};
use relay::wire::EdgeId;
use relay::work::{Extranonce, ExtranonceLayout};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfigFile {
    pub edge: EdgeSection,
    pub core: CoreSection,
    #[serde(default)]
    pub stratum: StratumSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
    pub fallback: Option<FallbackSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    /// This edge's identity; must match the id in its certificate.
    pub id: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    pub spool_dir: PathBuf,
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    #[serde(default = "default_job_age")]
    pub max_job_age_secs: u64,
}

fn default_algorithm() -> String {
    "scrypt".into()
}
fn default_spool_max() -> u64 {
    4 << 30
}
fn default_job_age() -> u64 {
    600
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreSection {
    /// `host:port` of each core shard's gateway.
    pub endpoints: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Name to expect in the core's certificate (default: the endpoint's host).
    pub server_name: Option<String>,
    #[serde(default = "default_batch_shares")]
    pub max_batch_shares: usize,
    #[serde(default = "default_batch_delay")]
    pub max_batch_delay_ms: u64,
}

fn default_batch_shares() -> usize {
    1000
}
fn default_batch_delay() -> u64 {
    200
}

/// `[fallback]`: a pool to mine for while the core is unreachable.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSection {
    /// `stratum+tcp://host:port` or `stratum+ssl://host:port`.
    pub url: String,
    /// Our account at the backup pool.
    pub user: String,
    #[serde(default = "default_fallback_password")]
    pub password: String,
    /// PEM roots for `stratum+ssl://` (default: the system bundle).
    pub tls_ca: Option<PathBuf>,
    #[serde(default = "default_fallback_after")]
    pub after_secs: u64,
}

fn default_fallback_password() -> String {
    "x".into()
}
fn default_fallback_after() -> u64 {
    60
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
}

/// A checked edge configuration.
#[derive(Debug)]
pub struct EdgeConfig {
    pub file: PathBuf,
    pub edge_id: EdgeId,
    pub algorithm: PowAlgorithm,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub max_job_age: Duration,
    pub endpoints: Vec<CoreEndpoint>,
    pub client: quinn::ClientConfig,
    pub max_batch_shares: usize,
    pub max_batch_delay: Duration,
    pub stratum: StratumSection,
    pub limits: LimitsSection,
    pub metrics_listen: SocketAddr,
    pub log_format: LogFormat,
    /// The backup pool, if one is configured.
    pub fallback: Option<FallbackConfig>,
}

fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

impl EdgeConfig {
    pub fn load(file: &Path) -> Result<EdgeConfig, ConfigError> {
        let raw: EdgeConfigFile = load_toml(file)?;
        let edge_id = EdgeId::new(raw.edge.id.clone())
            .map_err(|e| invalid(file, "edge.id", e.to_string()))?;
        let algorithm: PowAlgorithm = raw
            .edge
            .algorithm
            .parse()
            .map_err(|e: String| invalid(file, "edge.algorithm", e))?;
        if raw.core.endpoints.is_empty() {
            return Err(invalid(
                file,
                "core.endpoints",
                "at least one core endpoint is needed",
            ));
        }
        let mut endpoints = Vec::new();
        for (i, ep) in raw.core.endpoints.iter().enumerate() {
            let key = format!("core.endpoints[{i}]");
            let addr = ep
                .to_socket_addrs()
                .map_err(|e| invalid(file, &key, format!("'{ep}': {e}")))?
                .next()
                .ok_or_else(|| invalid(file, &key, format!("'{ep}' resolves to no address")))?;
            let host = ep.rsplit_once(':').map_or(ep.as_str(), |(h, _)| h);
            endpoints.push(CoreEndpoint {
                name: ep.clone(),
                addr,
                server_name: raw
                    .core
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string()),
            });
        }
        let load =
            |key: &str, r: relay::quic::Result<_>| r.map_err(|e| invalid(file, key, e.to_string()));
        let ca = load("core.ca", relay::quic::certs::load_cert_chain(&raw.core.ca))?;
        let chain = load(
            "core.cert",
            relay::quic::certs::load_cert_chain(&raw.core.cert),
        )?;
        let key = relay::quic::certs::load_private_key(&raw.core.key)
            .map_err(|e| invalid(file, "core.key", e.to_string()))?;
        let client = relay::quic::endpoint::client_config(&ca, chain, key)
            .map_err(|e| invalid(file, "core.cert", e.to_string()))?;
        // Checks the Stratum and limits sections now, so a bad value fails at start.
        let layout = ExtranonceLayout::default();
        let probe = server_config(
            file,
            &raw.stratum,
            &raw.limits,
            algorithm,
            layout,
            layout
                .edge_prefix(0, 0)
                .map_err(|e| invalid(file, "edge", e.to_string()))?,
        )?;
        let fallback = match &raw.fallback {
            None => None,
            Some(f) => Some(fallback_config(file, f, probe.session.version_mask)?),
        };
        Ok(EdgeConfig {
            file: file.to_path_buf(),
            edge_id,
            algorithm,
            spool_dir: raw.edge.spool_dir,
            spool_max_bytes: raw.edge.spool_max_bytes,
            max_job_age: Duration::from_secs(raw.edge.max_job_age_secs),
            endpoints,
            client,
            max_batch_shares: raw.core.max_batch_shares.max(1),
            max_batch_delay: Duration::from_millis(raw.core.max_batch_delay_ms),
            stratum: raw.stratum,
            limits: raw.limits,
            metrics_listen: raw.metrics.listen,
            log_format: raw.log.format,
            fallback,
        })
    }

    /// The Stratum server configuration under the lease the core gave us.
    pub fn server_config(
        &self,
        prefix: Extranonce,
        extranonce2_size: u8,
    ) -> Result<ServerConfig, ConfigError> {
        let layout = ExtranonceLayout {
            extranonce2_len: extranonce2_size as usize,
            ..ExtranonceLayout::default()
        };
        server_config(
            &self.file,
            &self.stratum,
            &self.limits,
            self.algorithm,
            layout,
            prefix,
        )
    }
}

/// Checks `[fallback]`; `version_mask` is what our miners may roll (asked of the backup pool).
fn fallback_config(
    file: &Path,
    f: &FallbackSection,
    version_mask: relay::work::VersionMask,
) -> Result<FallbackConfig, ConfigError> {
    let url: PoolUrl = f
        .url
        .parse()
        .map_err(|e: relay::upstream::PoolUrlError| invalid(file, "fallback.url", e.reason))?;
    if f.user.trim().is_empty() {
        return Err(invalid(
            file,
            "fallback.user",
            "the account at the backup pool must not be empty",
        ));
    }
    if f.after_secs == 0 {
        return Err(invalid(
            file,
            "fallback.after_secs",
            "must be at least 1 (seconds without the core before miners get the backup pool's work)",
        ));
    }
    let tls_roots = match (&f.tls_ca, url.tls) {
        (Some(_), false) => {
            return Err(invalid(
                file,
                "fallback.tls_ca",
                format!("set, but fallback.url '{}' is not stratum+ssl://", f.url),
            ))
        }
        (ca, true) => Some(std::sync::Arc::new(
            relay::upstream::load_tls_roots(ca.as_deref())
                .map_err(|reason| invalid(file, "fallback.tls_ca", reason))?,
        )),
        (None, false) => None,
    };
    let mut session = UpstreamConfig::new(f.user.clone(), f.password.clone());
    session.version_rolling = (version_mask.0 != 0).then_some(version_mask);
    let mut connect = ConnectOptions::new(url, session);
    connect.tls_roots = tls_roots;
    Ok(FallbackConfig {
        connect,
        after: Duration::from_secs(f.after_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example, with its certificate paths pointed at a freshly issued PKI.
    fn example_with_pki(dir: &Path) -> String {
        use relay::quic::certs;
        let ca = certs::generate_ca("test CA").unwrap();
        ca.write(dir).unwrap();
        certs::issue_edge_cert(&ca, "farm-1")
            .unwrap()
            .write(dir, "farm-1")
            .unwrap();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge.example.toml"),
        )
        .unwrap();
        text.replace("/etc/quarry/", &format!("{}/", dir.display()))
            .replace("core.example.net:4444", "127.0.0.1:4444")
    }

    #[test]
    fn example_config_in_deploy_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, example_with_pki(dir.path())).unwrap();
        let c = EdgeConfig::load(&path).unwrap();
        assert_eq!(c.edge_id.as_str(), "farm-1");
        assert_eq!(c.max_batch_shares, 1000);
        assert_eq!(c.endpoints[0].server_name, "127.0.0.1");
        assert!(
            c.fallback.is_none(),
            "the example leaves [fallback] commented out"
        );
    }

    /// The example with its `[fallback]` section switched on.
    fn with_fallback(text: &str) -> String {
        let start = text
            .find("# [fallback]")
            .expect("example documents [fallback]");
        let (head, tail) = text.split_at(start);
        let tail: String = tail
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("{head}{tail}\n")
    }

    #[test]
    fn the_documented_fallback_section_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        let text = with_fallback(&example_with_pki(dir.path())).replace(
            "stratum+ssl://backup.example.net:443",
            "stratum+tcp://127.0.0.1:3334",
        );
        let text = text.replace("tls_ca = ", "# tls_ca = ");
        std::fs::write(&path, text).unwrap();
        let c = EdgeConfig::load(&path).unwrap();
        let f = c.fallback.expect("[fallback] loaded");
        assert_eq!(f.connect.url.to_string(), "stratum+tcp://127.0.0.1:3334");
        assert_eq!(f.connect.session.username, "farm1.edge");
        assert_eq!(f.after, Duration::from_secs(60));
        assert_eq!(
            f.connect.session.version_rolling,
            Some(relay::work::VersionMask::BIP320)
        );
    }

    #[test]
    fn bad_fallback_values_name_file_key_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        let base = example_with_pki(dir.path());
        let section = |body: &str| format!("{base}\n[fallback]\n{body}\n");
        let cases = [
            (
                "url = \"http://pool:1\"\nuser = \"a\"",
                "fallback.url",
                "stratum+tcp://",
            ),
            (
                "url = \"stratum+tcp://pool:1\"\nuser = \" \"",
                "fallback.user",
                "empty",
            ),
            (
                "url = \"stratum+tcp://pool:1\"\nuser = \"a\"\nafter_secs = 0",
                "fallback.after_secs",
                "at least 1",
            ),
            (
                "url = \"stratum+tcp://pool:1\"\nuser = \"a\"\ntls_ca = \"/x.pem\"",
                "fallback.tls_ca",
                "not stratum+ssl",
            ),
            (
                "url = \"stratum+ssl://pool:1\"\nuser = \"a\"\ntls_ca = \"/nonexistent/ca.pem\"",
                "fallback.tls_ca",
                "/nonexistent/ca.pem",
            ),
        ];
        for (body, key, reason) in cases {
            std::fs::write(&path, section(body)).unwrap();
            let e = EdgeConfig::load(&path).unwrap_err().to_string();
            assert!(
                e.contains("edge.toml") && e.contains(key) && e.contains(reason),
                "{body}: {e}"
            );
        }
        std::fs::write(&path, section("url = \"stratum+tcp://pool:1\"")).unwrap();
        let e = EdgeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("user"), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        let good = example_with_pki(dir.path());
        std::fs::write(&path, good.replace("id = \"farm-1\"", "id = \"farm 1!\"")).unwrap();
        let e = EdgeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("edge.toml") && e.contains("edge.id"), "{e}");
        std::fs::write(&path, good.replace("farm-1.key", "missing.key")).unwrap();
        let e = EdgeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("core.key"), "{e}");
        std::fs::write(
            &path,
            good.replace("endpoints = [\"127.0.0.1:4444\"]", "endpoints = []"),
        )
        .unwrap();
        let e = EdgeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("core.endpoints"), "{e}");
    }
}
