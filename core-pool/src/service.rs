//! The running core: job manager, Stratum port, share crediting and block submission wired
//! together. `quarry-core` is a thin shell around [`CoreService`].
//!
//! Threads and what crosses between them (all owned messages over channels):
//! job manager ──Arc<PoolJob>──▶ job forwarder ──JobEntry──▶ Stratum connectors
//! connectors ──ShareEvent──▶ share processor ──BlockCandidate──▶ block submitter ──▶ daemon
//! Blocks get their own thread so a slow `submitblock` never holds up crediting, and crediting
//! never delays a block.
//!
//! With a `[gateway]` section, the edge [`Gateway`] runs beside them, sharing the job manager
//! (jobs out, blocks in) and the ledger (which it first rebuilds from the shard journal).
//!
//! The work source is the daemons' [`JobManager`] in pool mode, or the [`ProxyPool`] in proxy
//! mode (`[proxy]`); both are a [`JobSource`], so nothing downstream knows which. In proxy mode
//! the share processor also hands shares that meet the upstream target to the proxy.

use crate::config::CoreConfig;
use crate::daemon::rpc::{DaemonPool, RpcClient};
use crate::gateway::{Gateway, JobSource};
use crate::jobs::{BlockCandidate as DaemonCandidate, JobManager};
use crate::proxy::ProxyPool;
use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use edge::jobs::JobEntry;
use edge::server::ServerHandle;
use edge::share::ShareEvent;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::ledger::{Ledger, WorkerTally};

pub struct CoreService {
    source: Arc<dyn JobSource>,
    jobs: Option<Arc<JobManager>>,
    proxy: Option<Arc<ProxyPool>>,
    server: Arc<ServerHandle>,
    pub ledger: Arc<Ledger>,
    gateway: Option<Gateway>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl CoreService {
    pub fn start(cfg: &CoreConfig) -> anyhow::Result<CoreService> {
        let (source, jobs, proxy): (Arc<dyn JobSource>, _, _) = match &cfg.proxy {
            Some(p) => {
                let proxy = Arc::new(ProxyPool::start(p.clone()).context("starting proxy mining")?);
                (proxy.clone(), None, Some(proxy))
            }
            None => {
                let clients = cfg.daemons.iter().cloned().map(RpcClient::new).collect();
                let pool = DaemonPool::new(clients).context("daemons")?;
                let jobs = Arc::new(
                    JobManager::start(pool, cfg.jobs.clone())
                        .context("starting the job manager")?,
                );
                (jobs.clone(), Some(jobs), None)
            }
        };
        let (share_tx, share_rx) = crossbeam_channel::unbounded();
        let server = Arc::new(
            edge::server::start(cfg.server.clone(), share_tx)
                .with_context(|| format!("stratum listen address {}", cfg.server.listen))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Ledger::default());
        let gateway = match &cfg.gateway {
            None => None,
            Some(g) => {
                let source = source.clone();
                Some(
                    Gateway::start(g.clone(), source, ledger.clone())
                        .context("starting the edge gateway")?,
                )
            }
        };
        let (block_tx, block_rx) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        {
            let rx = source.subscribe();
            let server = server.clone();
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("job-forwarder".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match rx.recv_timeout(Duration::from_millis(200)) {
                                Ok(pj) => server.publish(Arc::new(
                                    JobEntry::new(
                                        pj.job.clone(),
                                        pj.upstream_target,
                                        Instant::now(),
                                    )
                                    .with_version_mask(pj.version_mask),
                                )),
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                                Err(_) => return,
                            }
                        }
                    })?,
            );
        }
        {
            let ledger = ledger.clone();
            let stop = stop.clone();
            let source = source.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("share-processor".into())
                    .spawn(move || process_shares(share_rx, block_tx, ledger, source, stop))?,
            );
        }
        {
            let source = source.clone();
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("block-submitter".into())
                    .spawn(move || submit_blocks(block_rx, source, stop))?,
            );
        }
        Ok(CoreService {
            source,
            jobs,
            proxy,
            server,
            ledger,
            gateway,
            stop,
            threads,
        })
    }

    pub fn stratum_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The daemons' job manager (pool mode only).
    pub fn job_manager(&self) -> Option<&Arc<JobManager>> {
        self.jobs.as_ref()
    }

    /// The upstream pools (proxy mode only).
    pub fn proxy(&self) -> Option<&Arc<ProxyPool>> {
        self.proxy.as_ref()
    }

    pub fn source(&self) -> &Arc<dyn JobSource> {
        &self.source
    }

    /// The edge gateway's UDP address, when it runs.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(Gateway::local_addr)
    }

    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_ref()
    }

    pub fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown();
        }
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = self.proxy.take() {
            p.shutdown();
        }
    }
}

fn process_shares(
    rx: Receiver<ShareEvent>,
    blocks: Sender<DaemonCandidate>,
    ledger: Arc<Ledger>,
    source: Arc<dyn JobSource>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let ev = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(_) => return,
        };
        match ev {
            ShareEvent::Accepted(s) => {
                if s.meets_upstream {
                    source.forward_share(&s.to_wire());
                }
                ledger.credit(&s.worker, s.difficulty.value(), false);
                metrics::counter!("quarry_core_shares_credited_total").increment(1);
            }
            ShareEvent::Block(b) => {
                // The block goes out first; crediting can wait a microsecond.
                let _ = blocks.send(DaemonCandidate {
                    job_id: b.share.job_id.clone(),
                    coinbase: b.coinbase,
                    header: b.header,
                });
                ledger.credit(&b.share.worker, b.share.difficulty.value(), true);
                metrics::counter!("quarry_core_shares_credited_total").increment(1);
            }
        }
    }
}

fn submit_blocks(rx: Receiver<DaemonCandidate>, jobs: Arc<dyn JobSource>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let c = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(c) => c,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(_) => return,
        };
        let job_id = c.job_id.clone();
        if let Err(e) = jobs.submit_block(c) {
            tracing::error!(job = %job_id, error = %e, "block candidate could not be submitted");
        }
    }
}
