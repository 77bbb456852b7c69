//! The proxy's manager thread: upstream connections, selection, job publication, forwarding.

use super::alarm::{AlarmAction, RejectAlarm};
use super::selector::Selector;
use super::translate::{
    share_target, translate, upstream_share, ForwardError, JobOrigin, UpstreamWork,
};
use super::{share_hash, Command, Shared, UpstreamSpec};
use crate::jobs::{first_job_id, JobReason, PoolJob};
use crossbeam_channel::{Receiver, Sender};
use relay::quic::backoff::Backoff;
use relay::upstream::{
    ConnEvent, ConnectOptions, PoolUrl, ShareVerdict, UpstreamConfig, UpstreamConn, UpstreamEvent,
};
use relay::wire::ShareData;
use relay::work::{Difficulty, Extranonce, Job, JobId, Target, UpstreamCarve, VersionMask};
use rustls::RootCertStore;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, error, info, warn};

pub(super) fn register_metrics() {
    metrics::describe_gauge!(
        "quarry_core_upstream_connected",
        "1 while the upstream pool connection is subscribed and authorized"
    );
    metrics::describe_gauge!(
        "quarry_core_upstream_active",
        "1 for the upstream whose jobs miners work on now"
    );
    metrics::describe_gauge!(
        "quarry_core_upstream_difficulty",
        "share difficulty the upstream pool asks of us"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_shares_forwarded_total",
        "shares sent to the upstream pool"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_shares_total",
        "upstream verdicts on forwarded shares, by result"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_worker_shares_total",
        "upstream verdicts on forwarded shares, by worker and result"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_rejects_total",
        "upstream rejects of forwarded shares, by the upstream's error code"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_not_forwarded_total",
        "shares flagged for the upstream that were not sent, by reason"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_failovers_total",
        "times the work moved from one upstream to another"
    );
    metrics::describe_counter!(
        "quarry_core_upstream_alarms_total",
        "runs of rejected forwarded shares (wholesale rejects)"
    );
    metrics::describe_histogram!(
        "quarry_core_upstream_answer_seconds",
        "time from sending a share upstream to the upstream's answer"
    );
    metrics::describe_histogram!(
        "quarry_core_upstream_forward_delay_seconds",
        "time from a share's arrival at the edge or core to its submit upstream"
    );
}

struct Ready {
    carve: UpstreamCarve,
    version_mask: Option<VersionMask>,
}

struct Slot {
    spec: UpstreamSpec,
    /// Where to connect next (a `client.reconnect` may move it).
    target: PoolUrl,
    conn: Option<UpstreamConn>,
    /// The tag of `conn`'s events; events of earlier connections are ignored.
    conn_tag: Option<usize>,
    /// Bumped on every new connection and every extranonce change.
    generation: u64,
    ready: Option<Ready>,
    difficulty: Option<Difficulty>,
    /// The upstream's newest job on the current generation.
    last_job: Option<Job>,
    /// The next job must be published clean (the extranonce changed).
    force_clean: bool,
    /// The previous-block hash of the upstream's newest job: shares on jobs of another one are
    /// stale to the upstream and are not forwarded into a sure reject.
    tip: Option<relay::work::PrevHash>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    alarm: RejectAlarm,
    answer_secs_sum: f64,
    answers: u64,
}

struct Ticket {
    upstream: usize,
    worker: Arc<str>,
    difficulty: f64,
    reply: Option<Sender<Result<(), String>>>,
}

struct Manager {
    shared: Arc<Shared>,
    roots: Vec<Option<Arc<RootCertStore>>>,
    slots: Vec<Slot>,
    selector: Selector,
    events_tx: Sender<(usize, ConnEvent)>,
    /// The upstream whose jobs are published now.
    active: Option<usize>,
    next_job: u64,
    next_ticket: u64,
    tickets: HashMap<u64, Ticket>,
    /// Forwarded share identities, to never submit one twice (edge replays, audits).
    forwarded: HashSet<(JobId, Extranonce, Extranonce, u32, u32, u32)>,
    forwarded_order: VecDeque<(JobId, Extranonce, Extranonce, u32, u32, u32)>,
    last_published_prev: Option<relay::work::PrevHash>,
    next_tag: usize,
}

const FORWARDED_MEMORY: usize = 100_000;

pub(super) fn run(
    shared: Arc<Shared>,
    roots: Vec<Option<Arc<RootCertStore>>>,
    commands: Receiver<Command>,
    wake: Receiver<()>,
) {
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let cfg = &shared.config;
    let now = Instant::now();
    let weights: Vec<u32> = cfg.upstreams.iter().map(|u| u.weight).collect();
    let slots = cfg
        .upstreams
        .iter()
        .map(|u| Slot {
            spec: u.clone(),
            target: u.url.clone(),
            conn: None,
            conn_tag: None,
            generation: 0,
            ready: None,
            difficulty: None,
            last_job: None,
            force_clean: false,
            tip: None,
            backoff: Backoff::new(cfg.retry_min, cfg.retry_max),
            retry_at: Some(now),
            alarm: RejectAlarm::new(cfg.reject_alarm_after, Duration::from_secs(600)),
            answer_secs_sum: 0.0,
            answers: 0,
        })
        .collect();
    let mut m = Manager {
        selector: Selector::new(cfg.mode, &weights, cfg.failback, cfg.split_period, now),
        shared: shared.clone(),
        roots,
        slots,
        events_tx,
        active: None,
        next_job: first_job_id(),
        next_ticket: 1,
        tickets: HashMap::new(),
        forwarded: HashSet::new(),
        forwarded_order: VecDeque::new(),
        last_published_prev: None,
        next_tag: 0,
    };
    loop {
        let now = Instant::now();
        m.connect_due(now);
        m.reselect(now);
        let deadline = m.next_deadline(now);
        let timeout = deadline.saturating_duration_since(now);
        crossbeam_channel::select! {
            recv(events_rx) -> ev => {
                if let Ok((tag, ev)) = ev {
                    m.on_tagged(tag, ev, Instant::now());
                }
            }
            recv(wake) -> _ => {}
            default(timeout) => {}
        }
        loop {
            match commands.try_recv() {
                Ok(Command::Forward { share, reply }) => m.forward(share, reply),
                Ok(Command::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    for s in &mut m.slots {
                        if let Some(c) = s.conn.take() {
                            c.close();
                        }
                    }
                    return;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
            }
        }
        // Drain connection events that queued meanwhile without sleeping.
        while let Ok((tag, ev)) = events_rx.try_recv() {
            m.on_tagged(tag, ev, Instant::now());
        }
    }
}

impl Manager {
    fn name(&self, i: usize) -> &str {
        &self.slots[i].spec.name
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut d = now + Duration::from_millis(500);
        for s in &self.slots {
            if let Some(t) = s.retry_at {
                d = d.min(t.max(now));
            }
        }
        if let Some(t) = self.selector.next_change(now) {
            d = d.min(t);
        }
        d
    }

    fn connect_due(&mut self, now: Instant) {
        let cfg = &self.shared.config;
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.conn.is_some() || s.retry_at.is_none_or(|t| now < t) {
                continue;
            }
            s.retry_at = None;
            let mut session = UpstreamConfig::new(s.spec.user.clone(), s.spec.password.clone());
            session.version_rolling = cfg.version_rolling;
            session.handshake_timeout = cfg.handshake_timeout;
            session.answer_timeout = cfg.answer_timeout;
            let mut opts = ConnectOptions::new(s.target.clone(), session);
            opts.connect_timeout = cfg.connect_timeout;
            opts.idle_timeout = cfg.idle_timeout;
            opts.tls_roots = self.roots[i].clone();
            let tag = self.next_tag;
            self.next_tag += 1;
            match UpstreamConn::spawn(opts, tag, self.events_tx.clone()) {
                Ok(c) => {
                    s.conn = Some(c);
                    s.conn_tag = Some(tag);
                    s.generation += 1;
                    debug!(upstream = %s.spec.name, url = %s.target, "connecting");
                }
                Err(e) => {
                    error!(upstream = %s.spec.name, error = %e, "cannot start an upstream connection thread");
                    s.retry_at = Some(now + s.backoff.next_delay(rand::random()));
                }
            }
        }
    }

    fn stats<R>(&self, f: impl FnOnce(&mut super::ProxyStats) -> R) -> R {
        f(&mut self.shared.stats.lock())
    }

    /// Routes a connection's event to its slot; events of replaced connections are dropped
    /// (their slot has moved on, and their tickets were settled when they were replaced).
    fn on_tagged(&mut self, tag: usize, ev: ConnEvent, now: Instant) {
        if let Some(i) = self.slots.iter().position(|s| s.conn_tag == Some(tag)) {
            self.on_conn_event(i, ev, now);
        }
    }

    /// Drops upstream `i`'s connection now (its Closed event will be ignored) and settles its
    /// tickets; `retry_at` says when to connect again.
    fn drop_conn(&mut self, i: usize, retry_at: Instant, now: Instant) {
        let s = &mut self.slots[i];
        s.conn = None;
        s.conn_tag = None;
        s.ready = None;
        s.last_job = None;
        s.retry_at = Some(retry_at);
        self.selector.set_down(i);
        let label = s.spec.name.clone();
        metrics::gauge!("quarry_core_upstream_connected", "upstream" => label).set(0.0);
        self.stats(|st| st.upstreams[i].connected = false);
        self.settle_tickets(i, now);
    }

    fn settle_tickets(&mut self, i: usize, now: Instant) {
        let lost: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| t.upstream == i)
            .map(|(&k, _)| k)
            .collect();
        for k in lost {
            self.verdict(k, ShareVerdict::TimedOut, Duration::ZERO, now);
        }
    }

    fn on_conn_event(&mut self, i: usize, ev: ConnEvent, now: Instant) {
        match ev {
            ConnEvent::Connected { peer } => {
                debug!(upstream = %self.name(i), %peer, "TCP up, subscribing");
            }
            ConnEvent::Session(e) => self.on_session(i, e, now),
            ConnEvent::Closed { reason } => self.on_closed(i, reason, now),
        }
    }

    fn on_closed(&mut self, i: usize, reason: String, now: Instant) {
        let s = &mut self.slots[i];
        let was_ready = s.ready.is_some();
        let delay = s.backoff.next_delay(rand::random());
        let retry = s.retry_at.map_or(now + delay, |t| t.max(now + delay));
        // A moved target is honoured for one attempt; a failure there goes back to the config.
        if !was_ready {
            s.target = s.spec.url.clone();
        }
        let name = s.spec.name.clone();
        // Tickets of this connection will never be answered: drop_conn settles them.
        self.drop_conn(i, retry, now);
        if was_ready {
            warn!(upstream = %name, %reason, retry_in = ?delay, "upstream connection lost");
        } else {
            warn!(upstream = %name, %reason, retry_in = ?delay, "upstream connection failed");
        }
        self.reselect(now);
    }

    fn on_session(&mut self, i: usize, e: UpstreamEvent, now: Instant) {
        match e {
            UpstreamEvent::Ready {
                extranonce1,
                extranonce2_size,
                version_mask,
            } => {
                if !self.set_extranonce(i, extranonce1, extranonce2_size, now) {
                    return;
                }
                let s = &mut self.slots[i];
                if let Some(r) = &mut s.ready {
                    r.version_mask = version_mask;
                }
                s.backoff.reset();
                let name = s.spec.name.clone();
                self.check_mask(i, version_mask);
                info!(upstream = %name, extranonce1 = %extranonce1, extranonce2_size,
                      version_mask = ?version_mask.map(|m| format!("{:08x}", m.0)),
                      "upstream subscribed and authorized");
                metrics::gauge!("quarry_core_upstream_connected", "upstream" => name).set(1.0);
                self.stats(|st| {
                    st.upstreams[i].connected = true;
                    st.upstreams[i].connections += 1;
                });
                // Pools often send their first job before answering authorize.
                if self.slots[i].last_job.is_some() {
                    self.on_job(i, now);
                }
            }
            UpstreamEvent::Job(job) => {
                let s = &mut self.slots[i];
                s.tip = Some(job.prev_hash);
                let ready = s.ready.is_some();
                s.last_job = Some(job);
                // A job before the handshake finished waits for Ready, which publishes it.
                if ready {
                    self.on_job(i, now);
                }
            }
            UpstreamEvent::Difficulty(d) => {
                let name = self.name(i).to_string();
                debug!(upstream = %name, difficulty = d.value(), "upstream difficulty");
                metrics::gauge!("quarry_core_upstream_difficulty", "upstream" => name)
                    .set(d.value());
                self.slots[i].difficulty = Some(d);
                self.stats(|st| st.upstreams[i].difficulty = Some(d.value()));
            }
            UpstreamEvent::Extranonce {
                extranonce1,
                extranonce2_size,
            } => {
                info!(upstream = %self.name(i), extranonce1 = %extranonce1, extranonce2_size,
                      "upstream changed our extranonce (mining.set_extranonce)");
                if self.set_extranonce(i, extranonce1, extranonce2_size, now) {
                    // Whether the upstream judges older jobs with the old or the new extranonce1
                    // differs between pools: use none of them. Shares on our jobs of the old one
                    // are not forwarded (generation moved); the upstream's next job, which pools
                    // send right after set_extranonce, is published clean.
                    self.slots[i].last_job = None;
                    self.slots[i].force_clean = true;
                }
            }
            UpstreamEvent::VersionMask(m) => {
                warn!(upstream = %self.name(i), mask = %format!("{:08x}", m.0),
                      "upstream changed the version-rolling mask");
                if let Some(r) = &mut self.slots[i].ready {
                    r.version_mask = Some(m);
                }
                self.check_mask(i, Some(m));
            }
            UpstreamEvent::Reconnect { host, port, wait } => {
                let s = &mut self.slots[i];
                let mut t = s.target.clone();
                if let Some(h) = host.filter(|h| !h.is_empty()) {
                    t.host = h;
                }
                if let Some(p) = port {
                    t.port = p;
                }
                warn!(upstream = %s.spec.name, to = %t, ?wait, "upstream asked us to reconnect (client.reconnect)");
                s.target = t;
                self.drop_conn(i, now + wait, now);
                self.reselect(now);
            }
            UpstreamEvent::Message(m) => {
                info!(upstream = %self.name(i), message = %m, "upstream says")
            }
            UpstreamEvent::ShareResult {
                ticket,
                verdict,
                latency,
            } => self.verdict(ticket, verdict, latency, now),
            UpstreamEvent::Ignored { reason } => {
                debug!(upstream = %self.name(i), %reason, "upstream line ignored")
            }
        }
    }

    /// A job of upstream `i` arrived (or became usable): publish it if `i` has the work.
    fn on_job(&mut self, i: usize, now: Instant) {
        self.stats(|st| st.upstreams[i].jobs += 1);
        self.selector.set_up(i, now);
        let was = self.active;
        self.reselect(now);
        if was == Some(i) && self.active == Some(i) {
            let clean = std::mem::take(&mut self.slots[i].force_clean);
            self.publish(i, clean, now);
        }
    }

    /// Says loudly when the upstream's mask is narrower than what our miners may roll.
    fn check_mask(&self, i: usize, granted: Option<VersionMask>) {
        let Some(wanted) = self.shared.config.version_rolling else {
            return;
        };
        let granted = granted.unwrap_or(VersionMask::NONE);
        if wanted.0 & !granted.0 != 0 {
            error!(upstream = %self.name(i),
                   wanted = %format!("{:08x}", wanted.0), granted = %format!("{:08x}", granted.0),
                   "upstream allows fewer version bits than our miners roll: shares rolling the others cannot be forwarded");
        }
    }

    /// Fits our extranonce space under the upstream's; false (and the connection closed) when
    /// it does not fit.
    fn set_extranonce(&mut self, i: usize, e1: Extranonce, e2_size: usize, now: Instant) -> bool {
        let layout = self.shared.config.layout;
        let s = &mut self.slots[i];
        match layout.carve_under(e1, e2_size) {
            Ok(carve) => {
                let mask = s.ready.as_ref().and_then(|r| r.version_mask);
                s.ready = Some(Ready {
                    carve,
                    version_mask: mask,
                });
                s.generation += 1;
                true
            }
            Err(e) => {
                error!(upstream = %s.spec.name, error = %e,
                       "upstream cannot carry our extranonce space; not using it");
                self.drop_conn(i, now + Duration::from_secs(60), now);
                false
            }
        }
    }

    fn reselect(&mut self, now: Instant) {
        let pick = self.selector.select(now);
        if pick == self.active {
            return;
        }
        let from = self.active.map(|i| self.name(i).to_string());
        self.active = pick;
        for (i, s) in self.slots.iter().enumerate() {
            metrics::gauge!("quarry_core_upstream_active", "upstream" => s.spec.name.clone())
                .set(if Some(i) == pick { 1.0 } else { 0.0 });
        }
        let Some(to) = pick else {
            error!(from = ?from, "no upstream pool is usable: miners keep their last job");
            self.stats(|st| st.upstreams.iter_mut().for_each(|u| u.active = false));
            return;
        };
        let to_name = self.name(to).to_string();
        if from.is_some() {
            metrics::counter!("quarry_core_upstream_failovers_total").increment(1);
            if self.selector.mode() == super::SelectionMode::Failover {
                warn!(from = ?from, to = %to_name, "work moves to another upstream pool");
            } else {
                debug!(from = ?from, to = %to_name, "split: next upstream's slice");
            }
        } else {
            info!(to = %to_name, "work comes from this upstream pool");
        }
        self.stats(|st| {
            if from.is_some() {
                st.failovers += 1;
            }
            for (i, u) in st.upstreams.iter_mut().enumerate() {
                u.active = i == to;
            }
            st.upstreams[to].activations += 1;
        });
        if self.slots[to].last_job.is_some() {
            self.publish(to, true, now);
        }
    }

    /// Publishes upstream `i`'s newest job as a Quarry job.
    fn publish(&mut self, i: usize, force_clean: bool, now: Instant) {
        let algorithm = self.shared.config.algorithm;
        let s = &self.slots[i];
        let (Some(up), Some(ready)) = (&s.last_job, &s.ready) else {
            return;
        };
        let difficulty = s
            .difficulty
            .unwrap_or_else(|| Difficulty::new(1.0).expect("1 is a difficulty"));
        let work = UpstreamWork {
            upstream: i,
            generation: s.generation,
            carve: ready.carve,
            difficulty,
            version_mask: ready.version_mask,
        };
        let clean = force_clean
            || up.clean_jobs
            || self.last_published_prev.is_some_and(|p| p != up.prev_hash);
        let id = JobId::from_counter(self.next_job);
        self.next_job += 1;
        let job = translate(up, &work, id, clean);
        let target = share_target(difficulty, algorithm);
        let origin = JobOrigin {
            work,
            upstream_job_id: up.id.clone(),
            target,
            job_version: up.version,
        };
        let network_target = Target::from_compact(up.nbits).unwrap_or(Target::ZERO);
        self.last_published_prev = Some(up.prev_hash);
        debug!(upstream = %s.spec.name, job = %job.id, upstream_job = %up.id, clean, "publishing upstream job");
        let pool_job = Arc::new(PoolJob {
            job,
            template: None,
            network_target,
            upstream_target: Some(target),
            version_mask: Some(ready.version_mask.unwrap_or(VersionMask::NONE)),
            height: 0,
            created_at: now,
            reason: if clean {
                JobReason::NewBlock
            } else {
                JobReason::Refresh
            },
        });
        metrics::counter!("quarry_core_jobs_total", "reason" => "upstream").increment(1);
        self.shared.publish(pool_job, origin);
    }

    fn not_forwarded(&self, why: &ForwardError, reply: Option<Sender<Result<(), String>>>) {
        let key = match why {
            ForwardError::UnknownJob(_) => "unknown_job",
            ForwardError::OldConnection => "old_connection",
            ForwardError::Extranonce(_) => "extranonce",
            ForwardError::VersionMask { .. } => "version_mask",
            ForwardError::BelowTarget { .. } => "below_target",
            ForwardError::Duplicate => "duplicate",
            ForwardError::Stale => "stale",
        };
        metrics::counter!("quarry_core_upstream_not_forwarded_total", "reason" => key).increment(1);
        self.stats(|st| *st.not_forwarded.entry(key.into()).or_default() += 1);
        match why {
            ForwardError::VersionMask { .. } | ForwardError::Extranonce(_) => {
                warn!(error = %why, "share not forwarded")
            }
            _ => debug!(error = %why, "share not forwarded"),
        }
        if let Some(r) = reply {
            let _ = r.send(Err(why.to_string()));
        }
    }

    fn forward(&mut self, share: ShareData, reply: Option<Sender<Result<(), String>>>) {
        let algorithm = self.shared.config.algorithm;
        let Some((job, origin)) = self.shared.lookup(&share.job_id) else {
            return self.not_forwarded(&ForwardError::UnknownJob(share.job_id.clone()), reply);
        };
        let i = origin.work.upstream;
        let s = &self.slots[i];
        if s.generation != origin.work.generation || s.ready.is_none() {
            return self.not_forwarded(&ForwardError::OldConnection, reply);
        }
        if s.tip.is_some_and(|t| t != job.job.prev_hash) {
            return self.not_forwarded(&ForwardError::Stale, reply);
        }
        // The stricter of the target the job was issued with and the upstream's current one:
        // a share is never forwarded into a low-difficulty reject.
        let current = s.difficulty.map(|d| share_target(d, algorithm));
        let target = match current {
            Some(c) if c.to_f64() < origin.target.to_f64() => c,
            _ => origin.target,
        };
        let hash = share_hash(&job, &share, algorithm);
        if !target.is_met_by(&hash) {
            let achieved = relay::work::hash_difficulty(&hash, algorithm.diff1());
            let needed = target.to_difficulty(algorithm.diff1()).value();
            return self.not_forwarded(&ForwardError::BelowTarget { achieved, needed }, reply);
        }
        let key = (
            share.job_id.clone(),
            share.extranonce1,
            share.extranonce2,
            share.ntime,
            share.nonce,
            share.version,
        );
        if self.forwarded.contains(&key) {
            return self.not_forwarded(&ForwardError::Duplicate, reply);
        }
        let up_share = match upstream_share(&origin, &share) {
            Ok(u) => u,
            Err(e) => return self.not_forwarded(&e, reply),
        };
        let Some(conn) = &self.slots[i].conn else {
            return self.not_forwarded(&ForwardError::OldConnection, reply);
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if !conn.submit(ticket, up_share) {
            return self.not_forwarded(&ForwardError::OldConnection, reply);
        }
        self.forwarded.insert(key.clone());
        self.forwarded_order.push_back(key);
        while self.forwarded_order.len() > FORWARDED_MEMORY {
            if let Some(k) = self.forwarded_order.pop_front() {
                self.forwarded.remove(&k);
            }
        }
        if share.received_at_ms > 0 {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            metrics::histogram!("quarry_core_upstream_forward_delay_seconds")
                .record(now_ms.saturating_sub(share.received_at_ms) as f64 / 1000.0);
        }
        let name = self.name(i).to_string();
        metrics::counter!("quarry_core_upstream_shares_forwarded_total", "upstream" => name)
            .increment(1);
        let worker = share.worker.clone();
        let difficulty = target.to_difficulty(algorithm.diff1()).value();
        self.stats(|st| {
            st.upstreams[i].forwarded += 1;
            let w = st
                .workers
                .entry(st.upstreams[i].name.clone())
                .or_default()
                .entry(worker.to_string())
                .or_default();
            w.forwarded += 1;
        });
        self.tickets.insert(
            ticket,
            Ticket {
                upstream: i,
                worker,
                difficulty,
                reply,
            },
        );
    }

    fn verdict(&mut self, ticket: u64, verdict: ShareVerdict, latency: Duration, now: Instant) {
        let Some(t) = self.tickets.remove(&ticket) else {
            return;
        };
        let i = t.upstream;
        let name = self.name(i).to_string();
        let (result, reason, stale) = match &verdict {
            ShareVerdict::Accepted => ("accepted", None, false),
            ShareVerdict::Rejected(e) => (
                "rejected",
                Some(format!("{} {}", e.code.0, e.message)),
                relay::upstream::session::is_stale(e),
            ),
            ShareVerdict::TimedOut => ("timeout", Some("timeout".to_string()), false),
        };
        metrics::counter!("quarry_core_upstream_shares_total", "upstream" => name.clone(), "result" => result)
            .increment(1);
        metrics::counter!("quarry_core_upstream_worker_shares_total",
            "upstream" => name.clone(), "worker" => t.worker.to_string(), "result" => result)
        .increment(1);
        if let ShareVerdict::Rejected(e) = &verdict {
            metrics::counter!("quarry_core_upstream_rejects_total",
                "upstream" => name.clone(), "code" => e.code.0.to_string())
            .increment(1);
        }
        if latency > Duration::ZERO {
            metrics::histogram!("quarry_core_upstream_answer_seconds")
                .record(latency.as_secs_f64());
            let s = &mut self.slots[i];
            s.answer_secs_sum += latency.as_secs_f64();
            s.answers += 1;
        }
        let mean = {
            let s = &self.slots[i];
            if s.answers > 0 {
                s.answer_secs_sum / s.answers as f64
            } else {
                0.0
            }
        };
        let worker = t.worker.to_string();
        self.stats(|st| {
            let u = &mut st.upstreams[i];
            u.mean_answer_secs = mean;
            match &reason {
                None => {
                    u.accepted += 1;
                    u.accepted_difficulty += t.difficulty;
                }
                Some(r) => *u.rejected.entry(r.clone()).or_default() += 1,
            }
            let w = st
                .workers
                .entry(name.clone())
                .or_default()
                .entry(worker.clone())
                .or_default();
            match &reason {
                None => w.accepted += 1,
                Some(r) => *w.rejected.entry(r.clone()).or_default() += 1,
            }
        });
        if let Some(reply) = t.reply {
            let _ = reply.send(match &reason {
                None => Ok(()),
                Some(r) => Err(r.clone()),
            });
        }
        if matches!(verdict, ShareVerdict::TimedOut) && latency > Duration::ZERO {
            // The connection is up but the upstream does not answer: it is hung. Take the work
            // away now and reconnect, rather than feeding it shares for the idle timeout.
            if self.slots[i].conn.is_some() {
                error!(upstream = %name, timeout = ?self.shared.config.answer_timeout,
                       "upstream stopped answering forwarded shares: failing over and reconnecting");
                let retry = now + self.shared.config.retry_min;
                self.drop_conn(i, retry, now);
                self.reselect(now);
            }
            return;
        }
        let action = match &reason {
            None => {
                self.slots[i].alarm.accepted();
                None
            }
            Some(r) => {
                warn!(upstream = %name, %worker, reason = %r, "upstream rejected a forwarded share");
                self.slots[i].alarm.rejected(stale, now)
            }
        };
        if let Some(action) = action {
            self.stats(|st| st.upstreams[i].alarms += 1);
            metrics::counter!("quarry_core_upstream_alarms_total", "upstream" => name.clone())
                .increment(1);
            match action {
                AlarmAction::Resubscribe => {
                    error!(upstream = %name, last_reason = ?reason,
                           "upstream is rejecting our valid work wholesale: resubscribing");
                    self.drop_conn(i, now, now);
                    self.reselect(now);
                }
                AlarmAction::FailOver => {
                    let until = now + self.shared.config.demote_for;
                    error!(upstream = %name, last_reason = ?reason, demoted_for = ?self.shared.config.demote_for,
                           "upstream still rejects our valid work after resubscribing: failing over");
                    self.selector.demote(i, until);
                    self.drop_conn(i, now, now);
                    self.reselect(now);
                }
            }
        }
    }
}
