//! The edge's link to its core shard: QUIC with mutual TLS, batches, acks, replay.
//!
//! One thread runs a current-thread tokio runtime driving quinn. Accepted shares arrive on a
//! channel (already in a spool lane); the [`Batcher`] groups them, each batch is written to the
//! [`BatchSpool`] (fsync) *before* it is sent on its own unidirectional stream, and trimmed
//! only when the core acks it as durable in its journal. Block candidates skip the batcher and
//! go at once on their own stream. When the link drops, miners keep working on the last jobs
//! and shares pile up in the spool; on reconnect the edge tells the core where it left off
//! (`Hello.resume`), drops what the core already has and replays the rest with the original
//! `(epoch, seq)` so nothing is credited twice.
//!
//! Shards: the edge orders the configured core endpoints by rendezvous hashing of its edge id
//! (so all edges agree without coordination and a removed shard moves only its own edges) and
//! fails over to the next one when a shard does not answer. Dialling runs as its own task, so
//! shares keep being batched and spooled (and backup-pool work keeps flowing) while a dial to
//! an unreachable shard waits out its timeout.
//!
//! Backup pool (`[fallback]`, see [`crate::fallback`]): after `after` without a core link the
//! uplink also runs a Stratum client of the backup pool, publishes its jobs to the miners the
//! same way as the core's, forwards their shares on those jobs to it and keeps them out of the
//! batches; the core's first job after it is back takes the miners home.

use crate::batcher::{Batcher, PendingShare, ReadyBatch};
use crate::fallback::{is_fallback_job, BackupWork, Fallback, FallbackAction, FallbackConfig};
use crate::inbox::{ShareInbox, PICKUP_EVERY};
use crate::jobs::JobEntry;
use crate::server::ServerHandle;
use crate::share::ShareEvent;
use crate::spool::{unix_ms, write_atomic, BatchSpool, SpooledBatch};
use bytes::{Bytes, BytesMut};
use relay::pow::PowAlgorithm;
use relay::quic::Backoff;
use relay::upstream::{ConnEvent, ShareVerdict, UpstreamConn, UpstreamEvent};
use relay::wire::{
    Batch, BatchContext, BlockFound, ControlFrame, EdgeId, Hello, JobBase, ResumeState, Welcome,
    PROTOCOL_VERSION,
};
use relay::work::{Extranonce, ExtranonceLayout, JobId};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A core shard the edge may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreEndpoint {
    /// As configured (`host:port`), also the rendezvous key.
    pub name: String,
    pub addr: SocketAddr,
    /// The name in the core's certificate.
    pub server_name: String,
}

pub struct UplinkConfig {
    pub edge_id: EdgeId,
    pub endpoints: Vec<CoreEndpoint>,
    pub client: quinn::ClientConfig,
    pub spool_dir: PathBuf,
    pub default_max_batch_shares: usize,
    pub default_max_batch_delay: Duration,
    /// Miners keep working on the last job this long without the core; a warning after.
    pub max_job_age: Duration,
    /// The coin's proof of work (the backup pool's share target is in its terms).
    pub algorithm: PowAlgorithm,
    /// A backup pool for long core outages.
    pub fallback: Option<FallbackConfig>,
}

/// Orders endpoints by rendezvous (highest random weight) hashing of the edge id.
pub fn rendezvous_order(edge_id: &str, endpoints: &[CoreEndpoint]) -> Vec<CoreEndpoint> {
    let mut scored: Vec<([u8; 32], CoreEndpoint)> = endpoints
        .iter()
        .map(|e| {
            let mut h = Sha256::new();
            h.update(edge_id.as_bytes());
            h.update([0]);
            h.update(e.name.as_bytes());
            (h.finalize().into(), e.clone())
        })
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.into_iter().map(|(_, e)| e).collect()
}

/// The lease prefix last given by the core, so the Stratum port can open before the core is
/// reachable (miners then work on the spool until it is).
pub fn read_lease(spool_dir: &std::path::Path) -> Option<(Extranonce, u8)> {
    let text = std::fs::read_to_string(spool_dir.join("lease")).ok()?;
    let (prefix, size) = text.trim().split_once(' ')?;
    Some((Extranonce::from_hex(prefix).ok()?, size.parse().ok()?))
}

/// The Stratum server as the uplink sees it: it may start only after the first Welcome (a new
/// edge learns its extranonce lease from the core), so jobs that arrive before are held.
#[derive(Clone, Default)]
pub struct ServerSlot {
    inner: Arc<parking_lot::Mutex<SlotState>>,
}

#[derive(Default)]
struct SlotState {
    server: Option<Arc<ServerHandle>>,
    held_job: Option<Arc<JobEntry>>,
}

impl ServerSlot {
    pub fn set(&self, server: Arc<ServerHandle>) {
        let mut st = self.inner.lock();
        if let Some(job) = st.held_job.take() {
            server.publish(job);
        }
        st.server = Some(server);
    }

    pub fn get(&self) -> Option<Arc<ServerHandle>> {
        self.inner.lock().server.clone()
    }

    fn publish(&self, job: Arc<JobEntry>) {
        let mut st = self.inner.lock();
        match &st.server {
            Some(s) => s.publish(job),
            None => st.held_job = Some(job),
        }
    }

    fn trim_lane(&self, lane: u16, index: u64) {
        if let Some(s) = self.get() {
            s.trim_lane(lane, index);
        }
    }

    fn change_prefix(&self, prefix: Extranonce) {
        if let Some(s) = self.get() {
            s.change_prefix(prefix);
        }
    }
}

enum Event {
    Frame(u64, ControlFrame),
    Lost(u64, String),
    /// A dial finished: a link with its Welcome, or why no shard answered.
    Dialed(Box<anyhow::Result<Dialed>>),
    /// From the backup pool connection with this tag.
    Backup(usize, ConnEvent),
}

/// A core shard that answered our Hello with a Welcome.
struct Dialed {
    ep: CoreEndpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes read after the Welcome.
    buf: BytesMut,
    welcome: Welcome,
}

/// The backup pool's connection and state (see [`crate::fallback`]).
struct Backup {
    cfg: FallbackConfig,
    state: Fallback,
    work: BackupWork,
    conn: Option<UpstreamConn>,
    /// The tag of `conn`'s events; events of earlier connections are ignored.
    tag: Option<usize>,
    next_tag: usize,
    events: crossbeam_channel::Sender<(usize, ConnEvent)>,
    /// Forwarded shares awaiting the pool's verdict: ticket → worker.
    tickets: HashMap<u64, Arc<str>>,
    next_ticket: u64,
}

struct Link {
    id: u64,
    conn: quinn::Connection,
    control: quinn::SendStream,
}

pub struct Uplink {
    cfg: UplinkConfig,
    spool: BatchSpool,
    batcher: Batcher,
    ctx: Option<BatchContext>,
    server: ServerSlot,
    /// Told the lease of every Welcome (the binary waits for the first one on a new edge).
    lease_tx: Option<crossbeam_channel::Sender<BatchContext>>,
    link: Option<Link>,
    next_link_id: u64,
    /// Shares in each unacked batch, for the pending-shares gauge and acked counters.
    batch_sizes: HashMap<u64, usize>,
    jobs: HashMap<JobId, JobBase>,
    last_job_at: Option<Instant>,
    stale_warned: bool,
    backup: Option<Backup>,
    /// The backup connection's events, until `run` bridges them into its loop.
    backup_rx: Option<crossbeam_channel::Receiver<(usize, ConnEvent)>>,
    /// Accepted shares from the connectors. Made with the uplink, so the Stratum server can be
    /// given it (as its [`crate::share::ShareSink`]) before the loop runs.
    inbox: Arc<ShareInbox>,
    /// The loop's other events.
    tx: mpsc::UnboundedSender<Event>,
    rx: Option<mpsc::UnboundedReceiver<Event>>,
}

impl Uplink {
    pub fn new(
        cfg: UplinkConfig,
        spool: BatchSpool,
        server: ServerSlot,
        ctx: Option<BatchContext>,
        lease_tx: Option<crossbeam_channel::Sender<BatchContext>>,
    ) -> Uplink {
        let batcher = Batcher::new(cfg.default_max_batch_shares, cfg.default_max_batch_delay);
        let inbox = ShareInbox::new(batcher.max_shares, batcher.max_delay);
        let (backup, backup_rx) = match &cfg.fallback {
            None => (None, None),
            Some(f) => {
                register_fallback_metrics();
                let (tx, rx) = crossbeam_channel::unbounded();
                let first_id = unix_ms(std::time::SystemTime::now());
                (
                    Some(Backup {
                        cfg: f.clone(),
                        state: Fallback::new(f.after, Instant::now()),
                        work: BackupWork::new(cfg.algorithm, first_id),
                        conn: None,
                        tag: None,
                        next_tag: 0,
                        events: tx,
                        tickets: HashMap::new(),
                        next_ticket: 1,
                    }),
                    Some(rx),
                )
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Uplink {
            cfg,
            spool,
            batcher,
            ctx,
            server,
            lease_tx,
            link: None,
            next_link_id: 0,
            batch_sizes: HashMap::new(),
            jobs: HashMap::new(),
            last_job_at: None,
            stale_warned: false,
            backup,
            backup_rx,
            inbox,
            tx,
            rx: Some(rx),
        }
    }

    /// Where the Stratum server hands accepted shares to this uplink: each connector turn's
    /// shares go straight into the loop's [`ShareInbox`], which wakes it only for what cannot
    /// wait for its tick.
    pub fn share_sink(&self) -> Arc<ShareInbox> {
        self.inbox.clone()
    }

    /// Runs until `stop` is set: spawn on its own thread.
    pub fn run(mut self, recovered: Vec<ShareEvent>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tx = self.tx.clone();
        let mut rx = self
            .rx
            .take()
            .ok_or_else(|| anyhow::anyhow!("the uplink loop runs once per Uplink"))?;
        rt.block_on(async move {
            // Bridge the backup pool connection's events into the loop.
            if let Some(brx) = self.backup_rx.take() {
                let tx = tx.clone();
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("uplink-backup-bridge".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match brx.recv_timeout(Duration::from_millis(200)) {
                                Ok((tag, ev)) => {
                                    if tx.send(Event::Backup(tag, ev)).is_err() {
                                        return;
                                    }
                                }
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                                Err(_) => return,
                            }
                        }
                    })?;
            }
            let endpoint = relay::quic::endpoint::client_endpoint(
                SocketAddr::from(([0, 0, 0, 0], 0)),
                self.cfg.client.clone(),
            )?;
            for ev in recovered {
                self.on_share(ev, Instant::now()).await;
            }
            let mut backoff = Backoff::uplink();
            let mut next_dial = Instant::now();
            let mut dialing: Option<tokio::task::JoinHandle<()>> = None;
            let mut tick = tokio::time::interval(PICKUP_EVERY);
            let inbox = self.inbox.clone();
            let mut arrived = Vec::new();
            let mut last_stats = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if self.link.is_none() && dialing.is_none() && Instant::now() >= next_dial {
                    let hello = self.hello()?;
                    let order = rendezvous_order(self.cfg.edge_id.as_str(), &self.cfg.endpoints);
                    let (endpoint, tx) = (endpoint.clone(), tx.clone());
                    dialing = Some(tokio::spawn(async move {
                        let r = dial(&endpoint, order, hello).await;
                        let _ = tx.send(Event::Dialed(Box::new(r)));
                    }));
                }
                tokio::select! {
                    _ = inbox.woken() => {}
                    ev = rx.recv() => match ev {
                        Some(Event::Frame(id, f)) => self.on_frame(id, f),
                        Some(Event::Lost(id, why)) => self.on_lost(id, &why),
                        Some(Event::Dialed(r)) => {
                            dialing = None;
                            match (*r).and_then(|d| self.attach(d, &tx)) {
                                Ok(()) => backoff.reset(),
                                Err(e) => {
                                    let delay = backoff.next_delay(rand_unit());
                                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "uplink: cannot reach a core shard");
                                    next_dial = Instant::now() + delay;
                                }
                            }
                        }
                        Some(Event::Backup(tag, ev)) => self.on_backup(tag, ev, Instant::now()),
                        None => break,
                    },
                    _ = tick.tick() => {}
                }
                self.take_shares(&inbox, &mut arrived).await;
                let now = Instant::now();
                self.poll_fallback(now);
                while let Some(b) = self.batcher.poll(now) {
                    self.send_batch(b);
                }
                if let Err(e) = self.spool.persist_acks_if_due(now) {
                    tracing::error!(error = %e, "spool trim after ack failed");
                }
                if now.duration_since(last_stats) >= Duration::from_secs(1) {
                    last_stats = now;
                    self.stats(now);
                }
            }
            if let Some(d) = dialing.take() {
                d.abort();
            }
            inbox.close();
            self.take_shares(&inbox, &mut arrived).await;
            if let Some(b) = self.batcher.drain() {
                self.send_batch(b);
            }
            if let Some(conn) = self.backup.as_mut().and_then(|b| b.conn.take()) {
                conn.close();
            }
            if let Some(l) = self.link.take() {
                l.conn.close(0u32.into(), b"edge shutting down");
            }
            endpoint.wait_idle().await;
            Ok(())
        })
    }

    /// Everything the connectors left since the last look, in order.
    async fn take_shares(&mut self, inbox: &ShareInbox, arrived: &mut Vec<ShareEvent>) {
        inbox.drain_into(arrived);
        if arrived.is_empty() {
            return;
        }
        let now = Instant::now();
        for s in arrived.drain(..) {
            self.on_share(s, now).await;
        }
    }

    fn stats(&mut self, now: Instant) {
        let pending: usize = self.batch_sizes.values().sum::<usize>() + self.batcher.len();
        metrics::gauge!("quarry_edge_spool_pending_shares").set(pending as f64);
        metrics::gauge!("quarry_edge_spool_pending_batches")
            .set(self.spool.pending_batches() as f64);
        if let Some(l) = &self.link {
            metrics::gauge!("quarry_edge_uplink_rtt_seconds").set(l.conn.rtt().as_secs_f64());
            let _ = send_frame(
                &mut self.link,
                &ControlFrame::Ping {
                    nonce: unix_ms(std::time::SystemTime::now()),
                },
            );
        }
        let serving_backup = self.backup.as_ref().is_some_and(|b| b.state.is_serving());
        if self.link.is_none() && !serving_backup {
            if let Some(t) = self.last_job_at {
                if now.duration_since(t) > self.cfg.max_job_age && !self.stale_warned {
                    self.stale_warned = true;
                    tracing::warn!(age = ?now.duration_since(t), "no new work from the core for longer than max_job_age: miners are hashing an old job");
                }
            }
        }
    }

    fn hello(&self) -> anyhow::Result<Bytes> {
        Ok(ControlFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            edge_id: self.cfg.edge_id.clone(),
            software: format!("quarry-edge/{}", env!("CARGO_PKG_VERSION")),
            resume: self.spool.epoch.map(|epoch| ResumeState {
                epoch,
                next_seq: self.spool.next_seq,
            }),
        })
        .to_bytes()?)
    }

    /// Takes a dialled shard as the link: its Welcome, the control-stream reader, the replay.
    fn attach(&mut self, d: Dialed, tx: &mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
        let Dialed {
            ep,
            conn,
            send,
            mut recv,
            mut buf,
            welcome,
        } = d;
        if let Err(e) = self.on_welcome(&welcome) {
            conn.close(0u32.into(), b"edge cannot use this Welcome");
            return Err(e);
        }
        let id = self.next_link_id;
        self.next_link_id += 1;
        tracing::info!(core = %ep.name, addr = %ep.addr, shard = welcome.shard_id, lease = %welcome.lease_prefix, epoch = welcome.epoch, acked_through = ?welcome.acked_through, replay = self.spool.pending_batches(), "uplink connected");
        metrics::gauge!("quarry_edge_uplink_connected").set(1.0);
        // Control-stream reader.
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    loop {
                        match ControlFrame::take_from(&mut buf) {
                            Ok(Some(f)) => {
                                if tx.send(Event::Frame(id, f)).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let _ = tx.send(Event::Lost(id, format!("bad control frame: {e}")));
                                return;
                            }
                        }
                    }
                    match recv.read(&mut chunk).await {
                        Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                        Ok(None) => {
                            let _ = tx.send(Event::Lost(id, "control stream finished".into()));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Event::Lost(id, e.to_string()));
                            return;
                        }
                    }
                }
            });
        }
        self.link = Some(Link {
            id,
            conn,
            control: send,
        });
        // Replay what the core does not have yet, in order, with the original numbers.
        let replay: Vec<Vec<u8>> = self.spool.unacked().map(|b| b.stream.clone()).collect();
        if !replay.is_empty() {
            tracing::info!(batches = replay.len(), "uplink: replaying spooled batches");
        }
        for stream in replay {
            self.send_stream(stream, false);
        }
        if let Some(b) = &mut self.backup {
            if b.state.core_connected() == Some(FallbackAction::Disconnect) {
                b.disconnect("the core is back before the backup pool served");
            }
        }
        Ok(())
    }

    fn on_welcome(&mut self, w: &Welcome) -> anyhow::Result<()> {
        if self.spool.epoch.is_none() {
            self.spool.set_epoch(w.epoch)?;
        } else if self.spool.epoch != Some(w.epoch) {
            anyhow::bail!(
                "core answered with epoch {} but our spool is in epoch {:?}",
                w.epoch,
                self.spool.epoch
            );
        }
        if let Some(a) = w.acked_through {
            self.ack(a);
            self.spool.raise_next_seq(a + 1);
        }
        let ctx = BatchContext {
            lease_prefix: w.lease_prefix,
            extranonce2_size: w.extranonce2_size,
        };
        if self.ctx != Some(ctx) {
            if let Some(old) = self.ctx {
                tracing::error!(old = %old.lease_prefix, new = %w.lease_prefix, "the core gave this edge a different extranonce lease: reconnecting every miner");
                self.server.change_prefix(ctx.lease_prefix);
            }
            write_atomic(
                &self.cfg.spool_dir.join("lease"),
                format!("{} {}", w.lease_prefix, w.extranonce2_size).as_bytes(),
            )?;
            self.ctx = Some(ctx);
        }
        if let Some(tx) = &self.lease_tx {
            let _ = tx.send(ctx);
        }
        let p = w.policies;
        self.batcher.max_shares = (p.max_batch_shares as usize).max(1);
        self.batcher.max_delay = Duration::from_millis(p.max_batch_delay_ms as u64);
        self.inbox
            .set_batching(self.batcher.max_shares, self.batcher.max_delay);
        Ok(())
    }

    fn on_frame(&mut self, link: u64, f: ControlFrame) {
        if self.link.as_ref().map(|l| l.id) != Some(link) {
            return;
        }
        match f {
            ControlFrame::Job(j) if is_fallback_job(j.job.id.as_str()) => {
                // Its shares would be taken for the backup pool's and never credited.
                tracing::error!(job = %j.job.id, "the core sent a job id with the backup-pool prefix: job ignored");
            }
            ControlFrame::Job(j) => {
                let mut j = *j;
                if self
                    .backup
                    .as_mut()
                    .is_some_and(|b| b.state.core_job(Instant::now()))
                {
                    // Miners drop the backup pool's work at once.
                    j.job.clean_jobs = true;
                    metrics::gauge!("quarry_edge_fallback_active").set(0.0);
                    tracing::warn!(job = %j.job.id, "the core is back: miners return to its work");
                }
                self.jobs.insert(
                    j.job.id.clone(),
                    JobBase {
                        ntime: j.job.ntime,
                        version: j.job.version,
                    },
                );
                if self.jobs.len() > 256 {
                    // Keep the table small; old jobs fall back to per-batch bases.
                    self.jobs.clear();
                    self.jobs.insert(
                        j.job.id.clone(),
                        JobBase {
                            ntime: j.job.ntime,
                            version: j.job.version,
                        },
                    );
                }
                self.last_job_at = Some(Instant::now());
                self.stale_warned = false;
                let entry = JobEntry::new(j.job, j.upstream_target, Instant::now())
                    .with_version_mask(j.version_mask);
                self.server.publish(Arc::new(entry));
            }
            ControlFrame::Ack(a) => {
                if Some(a.epoch) == self.spool.epoch {
                    self.ack(a.through_seq);
                }
            }
            ControlFrame::Ping { nonce } => {
                let _ = send_frame(&mut self.link, &ControlFrame::Pong { nonce });
            }
            ControlFrame::Pong { .. } => {}
            ControlFrame::Error(e) => {
                tracing::error!(code = e.code, message = %e.message, "core reported an error");
            }
            other => tracing::warn!(frame = ?other, "unexpected control frame from the core"),
        }
    }

    fn ack(&mut self, through: u64) {
        match self.spool.ack_through(through) {
            Ok(n) if n > 0 => {
                let acked: Vec<u64> = self
                    .batch_sizes
                    .keys()
                    .copied()
                    .filter(|s| *s <= through)
                    .collect();
                let shares: usize = acked
                    .iter()
                    .filter_map(|s| self.batch_sizes.remove(s))
                    .sum();
                metrics::counter!("quarry_edge_batches_acked_total").increment(n as u64);
                metrics::counter!("quarry_edge_shares_acked_total").increment(shares as u64);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "spool trim after ack failed"),
        }
    }

    fn on_lost(&mut self, link: u64, why: &str) {
        if self.link.as_ref().map(|l| l.id) != Some(link) {
            return;
        }
        let close = self.link.as_ref().and_then(|l| l.conn.close_reason());
        // Why links drop, for operators: the core's own reason when it closed the link (a
        // shutdown, a newer connection of this edge, a ban...), a silent link (idle timeout), or
        // something else.
        let kind = match &close {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                u16::try_from(c.error_code.into_inner())
                    .map_or("unknown", relay::wire::close_code::name)
            }
            Some(quinn::ConnectionError::TimedOut) => "timeout",
            Some(quinn::ConnectionError::Reset) => "reset",
            _ => "other",
        };
        metrics::counter!("quarry_edge_uplink_lost_total", "reason" => kind).increment(1);
        let reason = close.map_or_else(|| why.to_string(), |r| r.to_string());
        match kind {
            // Reconnecting will not help until someone fixes the edge or its certificate.
            "banned" | "audit_failed" | "identity_mismatch" | "unsupported_version" => {
                tracing::error!(reason = %reason, kind, "the core refused this edge; miners keep working, shares are spooled")
            }
            _ => {
                tracing::warn!(reason = %reason, kind, "uplink lost; miners keep working, shares are spooled")
            }
        }
        metrics::gauge!("quarry_edge_uplink_connected").set(0.0);
        self.link = None;
        if let Some(b) = &mut self.backup {
            b.state.core_lost(Instant::now());
        }
    }

    async fn on_share(&mut self, ev: ShareEvent, now: Instant) {
        match ev {
            // The backup pool's work: forwarded there, never batched to the core; the lane
            // marks still move past it.
            ShareEvent::Accepted(s) if is_fallback_job(s.job_id.as_str()) => {
                self.on_backup_share(&s, false);
                if let Some(r) = s.spool_ref {
                    self.batcher.push_covered(r, now);
                }
            }
            ShareEvent::Block(b) if is_fallback_job(b.share.job_id.as_str()) => {
                tracing::info!(worker = %b.share.worker, job = %b.share.job_id, "block candidate on the backup pool's work: forwarded to it");
                self.on_backup_share(&b.share, true);
                if let Some(r) = b.share.spool_ref {
                    self.batcher.push_covered(r, now);
                }
            }
            ShareEvent::Accepted(s) => {
                let spool_ref = s.spool_ref;
                self.batcher.push(
                    PendingShare {
                        data: s.to_wire(),
                        spool_ref,
                    },
                    now,
                );
            }
            ShareEvent::Block(b) => {
                let Some(epoch) = self.spool.epoch else {
                    tracing::error!(
                        "block candidate before the first Welcome: kept in the spool lane only"
                    );
                    return;
                };
                let seq = match self.spool.take_seq() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "spool");
                        return;
                    }
                };
                let msg = BlockFound {
                    epoch,
                    seq,
                    share: b.share.to_wire(),
                    header: b.header,
                    coinbase: b.coinbase,
                };
                let stream = match msg.to_bytes() {
                    Ok(s) => s.to_vec(),
                    Err(e) => {
                        self.spool.give_back_seq(seq);
                        tracing::error!(error = %e, "cannot encode a block candidate");
                        return;
                    }
                };
                // Durable first (one fsync, ~ms), then at once on its own stream: a block sent
                // but not spooled could be batched again after a crash and credited twice.
                let marks = b.share.spool_ref.into_iter().collect();
                if self.persist(
                    SpooledBatch {
                        seq,
                        marks,
                        stream: stream.clone(),
                    },
                    1,
                ) {
                    self.send_stream(stream, true);
                    metrics::counter!("quarry_edge_blocks_sent_total").increment(1);
                }
            }
        }
    }

    /// Spools a batch; on failure gives its sequence number back, because the core acks only
    /// contiguous sequences and a number never sent would stall every later ack.
    fn persist(&mut self, batch: SpooledBatch, shares: usize) -> bool {
        let seq = batch.seq;
        let marks = batch.marks.clone();
        match self.spool.append(batch) {
            Ok(()) => {
                self.batch_sizes.insert(seq, shares);
                for (lane, idx) in marks {
                    self.server.trim_lane(lane, idx);
                }
                true
            }
            Err(e) => {
                self.spool.give_back_seq(seq);
                metrics::counter!("quarry_edge_spool_errors_total").increment(1);
                tracing::error!(seq, error = %e, "BATCH SPOOL WRITE FAILED: the shares stay in their lanes and are batched again after a restart");
                false
            }
        }
    }

    fn send_batch(&mut self, ready: ReadyBatch) {
        if ready.shares.is_empty() {
            // Only records that are not the core's: nothing to send, the marks move on.
            return self.cover(&ready.marks);
        }
        let (Some(ctx), Some(epoch)) = (self.ctx, self.spool.epoch) else {
            // Never connected yet: keep them (they are in the lanes anyway).
            for (i, data) in ready.shares.into_iter().enumerate() {
                let spool_ref = ready.marks.get(i).copied();
                self.batcher
                    .push(PendingShare { data, spool_ref }, Instant::now());
            }
            return;
        };
        let seq = match self.spool.take_seq() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "spool");
                return;
            }
        };
        let n = ready.shares.len();
        let jobs = &self.jobs;
        let batch = match Batch::from_shares(epoch, seq, &ready.shares, &ctx, |id| {
            jobs.get(id).copied()
        }) {
            Ok(b) => b,
            Err(e) => {
                self.spool.give_back_seq(seq);
                tracing::error!(error = %e, shares = n, "cannot encode a batch; its shares stay in the spool lanes");
                return;
            }
        };
        let stream = match batch.to_bytes(&ctx) {
            Ok(b) => b.to_vec(),
            Err(e) => {
                self.spool.give_back_seq(seq);
                tracing::error!(error = %e, "cannot encode a batch");
                return;
            }
        };
        metrics::counter!("quarry_edge_wire_bytes_total").increment(stream.len() as u64);
        if !self.persist(
            SpooledBatch {
                seq,
                marks: ready.marks,
                stream: stream.clone(),
            },
            n,
        ) {
            return;
        }
        self.send_stream(stream, false);
        metrics::counter!("quarry_edge_batches_sent_total").increment(1);
        metrics::counter!("quarry_edge_shares_sent_total").increment(n as u64);
    }

    /// Lane records through `marks` are in durable batches or not the core's: they may go.
    fn cover(&mut self, marks: &[(u16, u64)]) {
        for &(lane, idx) in marks {
            let m = self.spool.marks.entry(lane).or_insert(idx);
            *m = (*m).max(idx);
            self.server.trim_lane(lane, idx);
        }
    }

    /// Connects or lets go of the backup pool as [`Fallback`] decides.
    fn poll_fallback(&mut self, now: Instant) {
        let ctx = self.ctx;
        let Some(b) = &mut self.backup else {
            return;
        };
        while let Some(action) = b.state.poll(now) {
            match action {
                FallbackAction::Connect if ctx.is_none() => {
                    // No lease yet: no Stratum port, no miners to serve.
                    b.state.backup_closed(now, rand_unit());
                }
                FallbackAction::Connect => {
                    b.work.connecting();
                    let tag = b.next_tag;
                    b.next_tag += 1;
                    match UpstreamConn::spawn(b.cfg.connect.clone(), tag, b.events.clone()) {
                        Ok(c) => {
                            tracing::warn!(after = ?b.cfg.after, pool = %b.cfg.connect.url, "core unreachable: connecting to the backup pool");
                            b.conn = Some(c);
                            b.tag = Some(tag);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the backup pool connection");
                            b.state.backup_closed(now, rand_unit());
                        }
                    }
                }
                FallbackAction::Disconnect => b.disconnect("miners are back on the core's work"),
            }
        }
    }

    /// The layout our miners' extranonces have under the lease (what must fit in the pool's).
    fn miner_layout(&self) -> ExtranonceLayout {
        ExtranonceLayout {
            extranonce2_len: self.ctx.map_or(4, |c| c.extranonce2_size as usize),
            ..ExtranonceLayout::default()
        }
    }

    fn on_backup(&mut self, tag: usize, ev: ConnEvent, now: Instant) {
        let layout = self.miner_layout();
        let Some(b) = &mut self.backup else {
            return;
        };
        if b.tag != Some(tag) {
            return;
        }
        let url = b.cfg.connect.url.clone();
        match ev {
            ConnEvent::Connected { peer } => {
                tracing::debug!(pool = %url, %peer, "backup pool: TCP up, subscribing");
            }
            ConnEvent::Closed { reason } => {
                b.conn = None;
                b.tag = None;
                b.settle_tickets();
                b.state.backup_closed(now, rand_unit());
                tracing::warn!(pool = %url, %reason, "backup pool connection ended");
            }
            ConnEvent::Session(e) => match e {
                UpstreamEvent::Ready {
                    extranonce1,
                    extranonce2_size,
                    version_mask,
                } => match b
                    .work
                    .ready(layout, extranonce1, extranonce2_size, version_mask)
                {
                    Ok(()) => {
                        b.state.backup_ready();
                        tracing::info!(pool = %url, extranonce1 = %extranonce1, extranonce2_size,
                            version_mask = ?version_mask.map(|m| format!("{:08x}", m.0)),
                            "backup pool subscribed and authorized");
                        self.publish_backup(false, now);
                    }
                    Err(e) => b.fail(&e.to_string(), now),
                },
                UpstreamEvent::Job(job) => {
                    b.work.upstream_job(job);
                    if b.work.is_ready() {
                        self.publish_backup(false, now);
                    }
                }
                UpstreamEvent::Difficulty(d) => {
                    tracing::debug!(pool = %url, difficulty = d.value(), "backup pool difficulty");
                    b.work.set_difficulty(d);
                }
                UpstreamEvent::Extranonce {
                    extranonce1,
                    extranonce2_size,
                } => match b.work.set_extranonce(layout, extranonce1, extranonce2_size) {
                    // Jobs under the old extranonce are void upstream: move miners on at once.
                    Ok(()) => self.publish_backup(true, now),
                    Err(e) => b.fail(&e.to_string(), now),
                },
                UpstreamEvent::VersionMask(m) => {
                    tracing::warn!(pool = %url, mask = %format!("{:08x}", m.0), "backup pool changed the version-rolling mask");
                    b.work.set_version_mask(m);
                    self.publish_backup(true, now);
                }
                UpstreamEvent::Reconnect { host, port, wait } => {
                    // Redirects are not followed: the configured pool is the one trusted.
                    tracing::warn!(pool = %url, ?host, ?port, ?wait, "backup pool asked us to reconnect; reconnecting to the configured address");
                    b.fail("client.reconnect", now);
                }
                UpstreamEvent::Message(m) => {
                    tracing::info!(pool = %url, message = %m, "backup pool says")
                }
                UpstreamEvent::ShareResult {
                    ticket, verdict, ..
                } => {
                    let worker = b.tickets.remove(&ticket);
                    let result = match &verdict {
                        ShareVerdict::Accepted => "accepted",
                        // A share that crossed the pool's new block on the wire: normal.
                        ShareVerdict::Rejected(e) if relay::upstream::session::is_stale(e) => {
                            tracing::debug!(pool = %url, worker = ?worker, reason = %e.message, "backup pool: stale share");
                            "stale"
                        }
                        ShareVerdict::Rejected(e) => {
                            tracing::warn!(pool = %url, worker = ?worker, code = e.code.0, reason = %e.message, "backup pool rejected a share");
                            "rejected"
                        }
                        ShareVerdict::TimedOut => "timeout",
                    };
                    metrics::counter!("quarry_edge_fallback_shares_total", "result" => result)
                        .increment(1);
                }
                UpstreamEvent::Ignored { reason } => {
                    tracing::debug!(pool = %url, %reason, "backup pool line ignored")
                }
            },
        }
    }

    /// Publishes the backup pool's newest job, when miners should work on it.
    fn publish_backup(&mut self, force_clean: bool, now: Instant) {
        let Some(b) = &mut self.backup else {
            return;
        };
        if !b.work.has_job() {
            return;
        }
        let Some(first) = b.state.backup_job(now) else {
            return;
        };
        if first {
            metrics::gauge!("quarry_edge_fallback_active").set(1.0);
            metrics::counter!("quarry_edge_fallback_activations_total").increment(1);
            tracing::warn!(after = ?b.cfg.after, pool = %b.cfg.connect.url,
                "core unreachable: miners now work for the backup pool (their shares there are not credited by the core)");
        }
        if let Some(entry) = b.work.translate_last(first || force_clean, now) {
            tracing::debug!(job = %entry.job.id, clean = entry.job.clean_jobs, "publishing a backup pool job");
            self.server.publish(Arc::new(entry));
        }
    }

    /// A share on a backup-pool job: to the pool if it meets its target.
    fn on_backup_share(&mut self, s: &crate::share::ShareRecord, block: bool) {
        let data = s.to_wire();
        let Some(b) = &mut self.backup else {
            metrics::counter!("quarry_edge_fallback_shares_total", "result" => "not_forwarded")
                .increment(1);
            return;
        };
        let result = match b.work.forward(&data, s.achieved) {
            Ok(up) => match &b.conn {
                Some(c) => {
                    let ticket = b.next_ticket;
                    b.next_ticket += 1;
                    if c.submit(ticket, up) {
                        b.tickets.insert(ticket, s.worker.clone());
                        "forwarded"
                    } else {
                        "not_forwarded"
                    }
                }
                None => "not_forwarded",
            },
            Err(relay::upstream::translate::ForwardError::BelowTarget { .. }) if !block => {
                "below_target"
            }
            Err(e) => {
                tracing::debug!(job = %s.job_id, error = %e, "share not forwarded to the backup pool");
                "not_forwarded"
            }
        };
        metrics::counter!("quarry_edge_fallback_shares_total", "result" => result).increment(1);
    }

    /// Sends one message on its own unidirectional stream (fire and forget: the ack, not the
    /// stream, says it arrived).
    fn send_stream(&mut self, bytes: Vec<u8>, urgent: bool) {
        let Some(link) = &self.link else {
            return;
        };
        let conn = link.conn.clone();
        tokio::spawn(async move {
            match conn.open_uni().await {
                Ok(mut s) => {
                    if urgent {
                        let _ = s.set_priority(100);
                    }
                    if let Err(e) = s.write_all(&bytes).await {
                        tracing::debug!(error = %e, "uplink stream write failed (will replay)");
                        return;
                    }
                    let _ = s.finish();
                }
                Err(e) => tracing::debug!(error = %e, "uplink: cannot open a stream (will replay)"),
            }
        });
    }
}

impl Backup {
    /// Closes the connection now (its events are ignored from here on).
    fn disconnect(&mut self, why: &str) {
        if let Some(c) = self.conn.take() {
            tracing::info!(pool = %self.cfg.connect.url, why, "closing the backup pool connection");
            drop(c);
        }
        self.tag = None;
        self.settle_tickets();
    }

    /// The pool cannot be used as it is: close, and retry after the backoff.
    fn fail(&mut self, why: &str, now: Instant) {
        tracing::error!(pool = %self.cfg.connect.url, error = why, "backup pool unusable; retrying later");
        self.disconnect(why);
        self.state.backup_closed(now, rand_unit());
    }

    /// Forwarded shares that will never be answered.
    fn settle_tickets(&mut self) {
        let n = self.tickets.len() as u64;
        self.tickets.clear();
        if n > 0 {
            metrics::counter!("quarry_edge_fallback_shares_total", "result" => "lost").increment(n);
        }
    }
}

fn register_fallback_metrics() {
    metrics::describe_gauge!(
        "quarry_edge_fallback_active",
        "1 while miners work on the backup pool's jobs (the core unreachable too long)"
    );
    metrics::describe_counter!(
        "quarry_edge_fallback_shares_total",
        "shares on backup-pool jobs: forwarded, below_target, not_forwarded, then the pool's accepted, stale, rejected, timeout, lost"
    );
    metrics::describe_counter!(
        "quarry_edge_fallback_activations_total",
        "times miners were moved to the backup pool"
    );
    metrics::gauge!("quarry_edge_fallback_active").set(0.0);
}

/// Dials the shards in order until one answers our Hello with a Welcome.
async fn dial(
    endpoint: &quinn::Endpoint,
    order: Vec<CoreEndpoint>,
    hello: Bytes,
) -> anyhow::Result<Dialed> {
    let mut last_err = anyhow::anyhow!("no core endpoints configured");
    for ep in order {
        match dial_one(endpoint, ep.clone(), &hello).await {
            Ok(d) => return Ok(d),
            Err(e) => {
                tracing::warn!(core = %ep.name, error = %format!("{e:#}"), "uplink: shard unavailable, trying the next");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

async fn dial_one(
    endpoint: &quinn::Endpoint,
    ep: CoreEndpoint,
    hello: &[u8],
) -> anyhow::Result<Dialed> {
    let connecting = endpoint.connect(ep.addr, &ep.server_name)?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting).await??;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(hello).await?;
    let mut buf = BytesMut::new();
    // The handshake completes before the core has judged our certificate: only a Welcome
    // proves the link is up.
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(f) = ControlFrame::take_from(&mut buf)? {
                return Ok::<ControlFrame, anyhow::Error>(f);
            }
            let mut chunk = [0u8; 4096];
            match recv.read(&mut chunk).await? {
                Some(n) => buf.extend_from_slice(&chunk[..n]),
                None => anyhow::bail!("core closed the control stream before Welcome"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no Welcome within 10 s"))??;
    let welcome = match first {
        ControlFrame::Welcome(w) => w,
        ControlFrame::Error(e) => anyhow::bail!("core refused us: [{}] {}", e.code, e.message),
        other => anyhow::bail!("expected Welcome, got {other:?}"),
    };
    Ok(Dialed {
        ep,
        conn,
        send,
        recv,
        buf,
        welcome,
    })
}

fn send_frame(link: &mut Option<Link>, f: &ControlFrame) -> anyhow::Result<()> {
    let Some(l) = link.as_mut() else {
        return Ok(());
    };
    let bytes = f.to_bytes()?;
    // Control frames are small and quinn buffers them: the write completes at once unless the
    // stream is blocked by flow control, and then a ping or pong may as well be dropped.
    match l.control.write_chunk(bytes).now_or_never() {
        Some(Err(e)) => Err(e.into()),
        Some(Ok(())) | None => Ok(()),
    }
}

trait NowOrNever: std::future::Future + Sized {
    fn now_or_never(self) -> Option<Self::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(self);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
impl<F: std::future::Future> NowOrNever for F {}

fn rand_unit() -> f64 {
    // Jitter only: the low bits of the clock are random enough.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (n % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str) -> CoreEndpoint {
        CoreEndpoint {
            name: name.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            server_name: "localhost".into(),
        }
    }

    #[test]
    fn rendezvous_order_is_stable_and_moves_only_the_removed_shards_edges() {
        let all = vec![ep("a:1"), ep("b:1"), ep("c:1"), ep("d:1")];
        let mut moved = 0;
        for i in 0..200 {
            let id = format!("edge-{i}");
            let first = rendezvous_order(&id, &all)[0].clone();
            assert_eq!(rendezvous_order(&id, &all)[0], first, "stable");
            let without_c: Vec<_> = all.iter().filter(|e| e.name != "c:1").cloned().collect();
            let after = rendezvous_order(&id, &without_c)[0].clone();
            if first.name != "c:1" {
                assert_eq!(after, first, "edges of other shards stay put");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 20 && moved < 90, "about a quarter move: {moved}");
    }
}
