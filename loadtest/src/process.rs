//! Child processes the harness starts and must always stop: on success, on failure, on Ctrl-C,
//! and (through the kernel's parent-death signal) even when the harness itself is killed.

use anyhow::{bail, Context};
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a workspace binary such as `quarry-core` is: next to this executable, or one folder up
/// (test executables live in `target/<profile>/deps`).
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            let candidate = d.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    bail!(
        "cannot find the `{name}` binary next to {} (build it first: cargo build --workspace --bins)",
        exe.display()
    )
}

/// Removes what an earlier run left in `dir` under `names` (folders or files), so a rerun into
/// the same folder starts from nothing: a core would count the old journal's credits, an edge
/// would replay the old spool, and an appended log would mix two runs.
pub fn clear_run_state(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        let path = dir.join(name);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("clearing {}", path.display())),
        }
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on one machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running child process with its output in a log file. Dropping it stops it.
pub struct ManagedProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ManagedProcess {
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe; it asks the kernel to SIGKILL the child when the
        // harness dies, so no process outlives a killed harness.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(ManagedProcess {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails if the process has exited, quoting the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{} exited ({status}); last log lines:\n{}",
                    self.name,
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(process = %self.name, "did not stop on SIGTERM; killing");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGKILL at once (fault tests).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Reads one metric (summing all its label sets) from a Prometheus endpoint.
pub fn scrape_metric(metrics: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let body = scrape(metrics)?;
    Ok(metric_sum(&body, name))
}

pub fn scrape(metrics: SocketAddr) -> anyhow::Result<String> {
    let body = ureq::get(&format!("http://{metrics}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .with_context(|| format!("scraping http://{metrics}/metrics"))?
        .into_string()?;
    Ok(body)
}

/// Sums the samples of metric `name` in Prometheus text format.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets() {
        let body = "# HELP x\nquarry_a{r=\"1\"} 2\nquarry_a{r=\"2\"} 3.5\nquarry_ab 7\n";
        assert_eq!(metric_sum(body, "quarry_a"), 5.5);
        assert_eq!(metric_sum(body, "quarry_ab"), 7.0);
        assert_eq!(metric_sum(body, "missing"), 0.0);
    }

    #[test]
    fn clearing_run_state_removes_folders_and_files_and_keeps_the_rest() {
        let dir = crate::stack::fresh_dir("quarry-clear-run-state");
        std::fs::create_dir_all(dir.join("journal/seg")).expect("journal");
        std::fs::write(dir.join("journal/seg/0"), b"old").expect("segment");
        std::fs::write(dir.join("blocks.jsonl"), b"{}\n").expect("log");
        std::fs::create_dir_all(dir.join("pki")).expect("pki");
        clear_run_state(&dir, &["journal", "blocks.jsonl", "spool"]).expect("clear");
        assert!(!dir.join("journal").exists());
        assert!(!dir.join("blocks.jsonl").exists());
        assert!(dir.join("pki").is_dir());
        crate::stack::remove_dir(&dir);
    }
}
