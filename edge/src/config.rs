//! Configuration sections shared by `quarry-edge` and `quarry-core` (both run a Stratum port).
//!
//! Files are TOML. Unknown keys are errors (a typo must not silently fall back to a default),
//! and every error names the file, the key and the reason.

use crate::server::ServerConfig;
use crate::session::SessionConfig;
use crate::vardiff::VardiffConfig;
use relay::pow::PowAlgorithm;
use relay::work::{Difficulty, Extranonce, ExtranonceLayout, VersionMask};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

/// Reads and parses a TOML file; parse errors carry the key path and line from `toml`.
pub fn load_toml<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })
}

/// A connector turn is tens of µs; the kernel's floor is 100 µs.
pub const DEFAULT_SCHED_SLICE_US: u64 = 200;

/// Connectors run real-time at this priority when permitted: above ordinary threads, below the
/// kernel's own real-time threads (which run at 50), leaving room for an operator's own.
pub const DEFAULT_REALTIME_PRIORITY: u8 = 10;

/// See [`crate::server::DEFAULT_REALTIME_GATHER`].
pub const DEFAULT_REALTIME_GATHER_US: u64 = 250;

/// `[stratum]`: the miner-facing port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StratumSection {
    /// Address miners connect to.
    pub listen: SocketAddr,
    /// Connector threads; 0 = one per core.
    pub threads: usize,
    /// Scheduler slice the connector threads ask for, µs (Linux 6.12+, see
    /// `edge::sched_slice`); 0 leaves the kernel's default.
    pub sched_slice_us: u64,
    /// `SCHED_FIFO` priority for the connector threads (see `edge::realtime`), 1..=99; 0 keeps
    /// them fair-scheduled. Without the privilege for it they stay fair-scheduled and say so.
    pub realtime_priority: u8,
    /// µs a busy real-time connector gathers submits between turns (see `edge::pacer`); it
    /// gathers only while submits come faster than one per this time.
    pub realtime_gather_us: u64,
    pub start_difficulty: f64,
    pub min_difficulty: f64,
    pub max_difficulty: f64,
    pub target_shares_per_minute: f64,
    /// Version bits miners may roll (BIP310), hex.
    pub version_mask: String,
    /// Seconds a superseded job on the current block still takes shares.
    pub stale_grace_secs: u64,
    /// If set, miners must send this password in mining.authorize.
    pub password: Option<String>,
}

impl Default for StratumSection {
    fn default() -> Self {
        StratumSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 3333)),
            threads: 0,
            sched_slice_us: DEFAULT_SCHED_SLICE_US,
            realtime_priority: DEFAULT_REALTIME_PRIORITY,
            realtime_gather_us: DEFAULT_REALTIME_GATHER_US,
            start_difficulty: 1.0,
            min_difficulty: 0.001,
            max_difficulty: 1e12,
            target_shares_per_minute: 18.0,
            version_mask: "1fffe000".into(),
            stale_grace_secs: 30,
            password: None,
        }
    }
}

/// `[limits]`: protection against misbehaving or hostile clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_line_bytes: usize,
    pub idle_timeout_secs: u64,
    pub handshake_timeout_secs: u64,
    /// Rejected shares in a row before the address is banned (0 = never).
    pub ban_after_invalid: u32,
    /// Share of rejects among recent shares that bans once `ban_after_invalid` were rejected.
    pub ban_invalid_ratio: f64,
    pub ban_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 15_000,
            max_connections_per_ip: 20_000,
            max_line_bytes: relay::stratum::DEFAULT_MAX_LINE,
            idle_timeout_secs: 600,
            handshake_timeout_secs: 30,
            ban_after_invalid: 100,
            ban_invalid_ratio: 0.5,
            ban_secs: 600,
        }
    }
}

fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn difficulty(file: &Path, key: &str, v: f64) -> Result<Difficulty, ConfigError> {
    Difficulty::new(v).map_err(|e| invalid(file, key, e.to_string()))
}

/// Builds the server configuration, checking every value.
pub fn server_config(
    file: &Path,
    stratum: &StratumSection,
    limits: &LimitsSection,
    algorithm: PowAlgorithm,
    layout: ExtranonceLayout,
    prefix: Extranonce,
) -> Result<ServerConfig, ConfigError> {
    let min = difficulty(file, "stratum.min_difficulty", stratum.min_difficulty)?;
    let max = difficulty(file, "stratum.max_difficulty", stratum.max_difficulty)?;
    let start = difficulty(file, "stratum.start_difficulty", stratum.start_difficulty)?;
    if min > max {
        return Err(invalid(
            file,
            "stratum.min_difficulty",
            format!("{} is above max_difficulty {}", min, max),
        ));
    }
    if !(stratum.target_shares_per_minute > 0.0 && stratum.target_shares_per_minute <= 600.0) {
        return Err(invalid(
            file,
            "stratum.target_shares_per_minute",
            "must be in (0, 600]",
        ));
    }
    let mask =
        u32::from_str_radix(stratum.version_mask.trim_start_matches("0x"), 16).map_err(|_| {
            invalid(
                file,
                "stratum.version_mask",
                format!("'{}' is not a hex mask", stratum.version_mask),
            )
        })?;
    if stratum.sched_slice_us != 0 && !(100..=100_000).contains(&stratum.sched_slice_us) {
        return Err(invalid(
            file,
            "stratum.sched_slice_us",
            format!(
                "{} is outside the kernel's 100..=100000 µs (0 keeps its default)",
                stratum.sched_slice_us
            ),
        ));
    }
    if stratum.realtime_priority > crate::realtime::MAX_PRIORITY {
        return Err(invalid(
            file,
            "stratum.realtime_priority",
            format!(
                "{} is outside 1..={} (0 keeps the connectors fair-scheduled)",
                stratum.realtime_priority,
                crate::realtime::MAX_PRIORITY
            ),
        ));
    }
    if !(20..=5_000).contains(&stratum.realtime_gather_us) {
        return Err(invalid(
            file,
            "stratum.realtime_gather_us",
            format!(
                "{} is outside 20..=5000 µs (a real-time connector woken for every submit spends more CPU switching than serving)",
                stratum.realtime_gather_us
            ),
        ));
    }
    if limits.max_line_bytes < 512 {
        return Err(invalid(
            file,
            "limits.max_line_bytes",
            "must be at least 512 (a mining.submit line is ~150 bytes)",
        ));
    }
    if !(0.0..=1.0).contains(&limits.ban_invalid_ratio) {
        return Err(invalid(
            file,
            "limits.ban_invalid_ratio",
            format!("{} is not in [0, 1]", limits.ban_invalid_ratio),
        ));
    }
    if limits.max_connections == 0 {
        return Err(invalid(
            file,
            "limits.max_connections",
            "must be at least 1",
        ));
    }
    Ok(ServerConfig {
        listen: stratum.listen,
        threads: stratum.threads,
        sched_slice: (stratum.sched_slice_us > 0)
            .then(|| Duration::from_micros(stratum.sched_slice_us)),
        realtime_priority: (stratum.realtime_priority > 0).then_some(stratum.realtime_priority),
        realtime_gather: Duration::from_micros(stratum.realtime_gather_us),
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
        max_line_bytes: limits.max_line_bytes,
        ban_duration: Duration::from_secs(limits.ban_secs),
        max_pending_output: 1 << 20,
        session: SessionConfig {
            algorithm,
            extranonce2_size: layout.extranonce2_len,
            version_mask: VersionMask(mask),
            start_difficulty: start.clamp(min, max),
            vardiff: VardiffConfig {
                target_shares_per_minute: stratum.target_shares_per_minute,
                min,
                max,
                ..Default::default()
            },
            stale_grace: Duration::from_secs(stratum.stale_grace_secs),
            password: stratum.password.clone(),
            ban_after_invalid: limits.ban_after_invalid,
            ban_invalid_ratio: limits.ban_invalid_ratio,
            idle_timeout: Duration::from_secs(limits.idle_timeout_secs),
            handshake_timeout: Duration::from_secs(limits.handshake_timeout_secs),
            max_workers_per_connection: 64,
        },
        layout,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        stratum: StratumSection,
        #[serde(default)]
        limits: LimitsSection,
    }

    fn load(text: &str) -> Result<ServerConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("quarry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("t{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let f: File = load_toml(&path)?;
        let layout = ExtranonceLayout::default();
        server_config(
            &path,
            &f.stratum,
            &f.limits,
            PowAlgorithm::Scrypt,
            layout,
            layout.edge_prefix(0, 0).unwrap(),
        )
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[stratum]\nlisten = \"127.0.0.1:1\"\nstart_dificulty = 4\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("start_dificulty"), "{msg}");
        assert!(msg.contains(".toml"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_and_reason() {
        let e = load("[stratum]\nmin_difficulty = 10\nmax_difficulty = 1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("key `stratum.min_difficulty`: 10 is above max_difficulty 1"),
            "{e}"
        );
        let e = load("[stratum]\nversion_mask = \"xyz\"\n").unwrap_err();
        assert!(e.to_string().contains("stratum.version_mask"), "{e}");
        let e = load("[limits]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(e.to_string().contains("max_connections"), "{e}");
    }

    #[test]
    fn defaults_are_sane() {
        let c = load("").unwrap();
        assert_eq!(c.session.version_mask, VersionMask(0x1fffe000));
        assert_eq!(c.max_connections, 15_000);
        assert_eq!(c.sched_slice, Some(Duration::from_micros(200)));
    }

    #[test]
    fn connectors_ask_to_run_real_time_unless_told_not_to_and_bad_settings_are_named() {
        let c = load("").unwrap();
        assert_eq!(c.realtime_priority, Some(DEFAULT_REALTIME_PRIORITY));
        assert_eq!(c.realtime_gather, Duration::from_micros(250));
        let c = load("[stratum]\nrealtime_priority = 0\nrealtime_gather_us = 100\n").unwrap();
        assert_eq!(c.realtime_priority, None);
        assert_eq!(c.realtime_gather, Duration::from_micros(100));
        for (key, bad) in [
            ("realtime_priority", 100),
            ("realtime_gather_us", 0),
            ("realtime_gather_us", 5_001),
        ] {
            let e = load(&format!("[stratum]\n{key} = {bad}\n")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("stratum.{key}")), "{msg}");
        }
    }

    #[test]
    fn a_scheduler_slice_is_the_kernel_s_default_at_zero_and_refused_outside_its_bounds() {
        assert_eq!(
            load("[stratum]\nsched_slice_us = 0\n").unwrap().sched_slice,
            None
        );
        assert_eq!(
            load("[stratum]\nsched_slice_us = 100\n")
                .unwrap()
                .sched_slice,
            Some(Duration::from_micros(100))
        );
        for bad in [50, 100_001] {
            let e = load(&format!("[stratum]\nsched_slice_us = {bad}\n")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("stratum.sched_slice_us"), "{msg}");
            assert!(msg.contains("100..=100000"), "{msg}");
        }
    }
}
