//! Edge leases: which extranonce prefix each edge gets, stable across core restarts.
//!
//! A miner's extranonce1 is `shard ‖ lease ‖ slot`. Lease 0 of a shard is the core's own Stratum
//! port; each remote edge gets its own lease byte in `1..=255`. The assignment must survive a
//! restart: an edge that replays shares after reconnecting built them under its old prefix, and
//! two edges must never share a prefix (their miners would search the same space and their
//! shares would collide). So the map is a small file in the journal folder, replaced atomically
//! (written to a temporary file, fsynced, renamed over the old one, folder fsynced).
//!
//! File format (`leases`): one `edge-id lease` pair per line, `#` comments allowed.

use relay::wire::EdgeId;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the lease map inside the journal folder.
pub const LEASES_FILE: &str = "leases";
const LEASES_TMP: &str = "leases.tmp";

/// Leases handed to remote edges; 0 is the core's own Stratum port.
pub const FIRST_EDGE_LEASE: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: line {line}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("no extranonce lease left for edge {edge}: all {max} are taken by other edges")]
    Exhausted { edge: EdgeId, max: u16 },
}

/// The persistent edge → lease map.
#[derive(Debug)]
pub struct Leases {
    path: PathBuf,
    by_edge: BTreeMap<EdgeId, u8>,
    /// Highest lease usable (255 with a one-byte lease).
    max_lease: u8,
}

impl Leases {
    /// Loads `dir/leases` (none yet: an empty map). `max_lease` bounds the leases handed out
    /// (`ExtranonceLayout::leases_per_shard() - 1`, at most 255).
    pub fn open(dir: &Path, max_lease: u8) -> Result<Leases, LeaseError> {
        let path = dir.join(LEASES_FILE);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| LeaseError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(|source| LeaseError::Io {
            op: "create folder",
            path: dir.to_path_buf(),
            source,
        })?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("read")(e)),
        };
        let mut by_edge = BTreeMap::new();
        let mut used = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let corrupt = |reason: String| LeaseError::Corrupt {
                path: path.clone(),
                line: i + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(edge), Some(lease), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(corrupt(format!("expected `edge-id lease`, got {line:?}")));
            };
            let edge = EdgeId::new(edge).map_err(|e| corrupt(e.to_string()))?;
            let lease: u8 = lease
                .parse()
                .map_err(|e| corrupt(format!("lease {lease:?}: {e}")))?;
            if lease < FIRST_EDGE_LEASE {
                return Err(corrupt(format!(
                    "lease {lease} is reserved for the core's own Stratum port"
                )));
            }
            if let Some(other) = used.insert(lease, edge.clone()) {
                return Err(corrupt(format!(
                    "lease {lease} is given to both {other} and {edge}"
                )));
            }
            if by_edge.insert(edge.clone(), lease).is_some() {
                return Err(corrupt(format!("edge {edge} is listed twice")));
            }
        }
        Ok(Leases {
            path,
            by_edge,
            max_lease,
        })
    }

    /// The lease of `edge`, if it has one.
    pub fn get(&self, edge: &EdgeId) -> Option<u8> {
        self.by_edge.get(edge).copied()
    }

    /// The lease of `edge`, assigning (and durably recording) the lowest free one if it has
    /// none yet.
    pub fn lease_for(&mut self, edge: &EdgeId) -> Result<u8, LeaseError> {
        if let Some(l) = self.get(edge) {
            return Ok(l);
        }
        let used: std::collections::HashSet<u8> = self.by_edge.values().copied().collect();
        let lease = (FIRST_EDGE_LEASE..=self.max_lease)
            .find(|l| !used.contains(l))
            .ok_or_else(|| LeaseError::Exhausted {
                edge: edge.clone(),
                max: u16::from(self.max_lease),
            })?;
        self.by_edge.insert(edge.clone(), lease);
        if let Err(e) = self.persist() {
            self.by_edge.remove(edge);
            return Err(e);
        }
        Ok(lease)
    }

    pub fn len(&self) -> usize {
        self.by_edge.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_edge.is_empty()
    }

    fn persist(&self) -> Result<(), LeaseError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(LEASES_TMP);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| LeaseError::Io { op, path, source }
        };
        let mut text =
            String::from("# edge-id lease (quarry-core; lease 0 is the core's own Stratum port)\n");
        for (edge, lease) in &self.by_edge {
            text.push_str(&format!("{edge} {lease}\n"));
        }
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(io("rename", &self.path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync folder", dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(s: &str) -> EdgeId {
        EdgeId::new(s).expect("edge id")
    }

    #[test]
    fn leases_are_stable_across_reopen_and_distinct() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Leases::open(dir.path(), 255).expect("open");
        assert_eq!(l.lease_for(&edge("farm-a")).expect("lease"), 1);
        assert_eq!(l.lease_for(&edge("farm-b")).expect("lease"), 2);
        assert_eq!(l.lease_for(&edge("farm-a")).expect("lease"), 1);
        drop(l);
        let mut l = Leases::open(dir.path(), 255).expect("reopen");
        assert_eq!(l.get(&edge("farm-b")), Some(2));
        assert_eq!(l.lease_for(&edge("farm-c")).expect("lease"), 3);
        assert_eq!(l.len(), 3);
        assert!(!dir.path().join(LEASES_TMP).exists());
    }

    #[test]
    fn running_out_of_leases_is_an_error_naming_the_edge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut l = Leases::open(dir.path(), 2).expect("open");
        l.lease_for(&edge("a")).expect("1");
        l.lease_for(&edge("b")).expect("2");
        let e = l.lease_for(&edge("c")).expect_err("full").to_string();
        assert!(e.contains("edge c") && e.contains("all 2"), "{e}");
        assert_eq!(l.get(&edge("c")), None);
    }

    #[test]
    fn a_damaged_lease_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, want) in [
            ("a 1\nb 1\n", "line 2"),
            ("a 0\n", "reserved"),
            ("a 1 extra\n", "line 1"),
            ("a 300\n", "lease \"300\""),
            ("a 1\na 2\n", "twice"),
        ] {
            fs::write(dir.path().join(LEASES_FILE), text).expect("write");
            let e = Leases::open(dir.path(), 255).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
