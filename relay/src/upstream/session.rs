//! The client side of one Stratum V1 connection to an upstream pool, without I/O.
//!
//! In proxy mining Quarry is a *miner* towards a larger pool: it subscribes, authorizes one
//! account for the whole farm, takes the pool's jobs and difficulty, and submits the shares of
//! its own miners that meet the pool's target. [`UpstreamSession`] is that conversation as a
//! state machine: lines from the pool go into [`UpstreamSession::handle_line`], lines for the
//! pool come out of [`UpstreamSession::poll_transmit`], and what the pool said comes out as
//! [`UpstreamEvent`]s. Time is passed in, so the handshake timeout and the answer timeout of
//! every submit are tested without sleeping.
//!
//! The handshake follows what mining firmware does, in the order pools expect it:
//! `mining.configure` (BIP310, only when version rolling is wanted) → `mining.subscribe` →
//! `mining.extranonce.subscribe` (when asked for; NiceHash-style pools then send
//! `mining.set_extranonce` instead of dropping the connection) → `mining.authorize`. The session
//! is ready when subscribe and authorize both succeeded.

use crate::stratum::error::{ErrorCode, StratumError};
use crate::stratum::message::{
    ClientRequest, Configure, Request, RequestId, ServerMessage, ServerNotification, Submit,
    VersionRollingRequest,
};
use crate::work::{Difficulty, Extranonce, Job, JobId, VersionMask};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How to present ourselves to the upstream pool.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The pool account (often `account.worker`): every forwarded share is submitted under it.
    pub username: String,
    pub password: String,
    pub user_agent: String,
    /// BIP310 version rolling: the mask we ask for (`None`: do not roll, send no configure).
    pub version_rolling: Option<VersionMask>,
    /// Send `mining.extranonce.subscribe`, so the pool may change our extranonce1 in place.
    pub extranonce_subscribe: bool,
    /// Subscribe and authorize must both be answered within this.
    pub handshake_timeout: Duration,
    /// A submit unanswered this long counts as rejected (`timeout`) and is forgotten.
    pub answer_timeout: Duration,
}

impl UpstreamConfig {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        UpstreamConfig {
            username: username.into(),
            password: password.into(),
            user_agent: concat!("quarry/", env!("CARGO_PKG_VERSION")).into(),
            version_rolling: Some(VersionMask::BIP320),
            extranonce_subscribe: true,
            handshake_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(30),
        }
    }
}

/// A share to forward, in the pool's terms (its job id, the full extranonce2 it expects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamShare {
    pub job_id: JobId,
    pub extranonce2: Extranonce,
    pub ntime: u32,
    pub nonce: u32,
    /// BIP310 6th parameter: the rolled version bits (only when version rolling was granted).
    pub version_bits: Option<u32>,
}

/// The pool's verdict on one forwarded share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareVerdict {
    Accepted,
    /// Rejected with the pool's own code and reason (`[23, "Low difficulty share", null]`).
    Rejected(StratumError),
    /// No answer within [`UpstreamConfig::answer_timeout`].
    TimedOut,
}

/// What the pool told us.
#[derive(Clone, Debug, PartialEq)]
pub enum UpstreamEvent {
    /// Subscribed and authorized: shares may be submitted from now on.
    Ready {
        extranonce1: Extranonce,
        extranonce2_size: usize,
        /// The version-rolling mask the pool granted (`None`: not negotiated or refused).
        version_mask: Option<VersionMask>,
    },
    Job(Job),
    Difficulty(Difficulty),
    /// `mining.set_extranonce`: jobs from now on use this extranonce1 and size.
    Extranonce {
        extranonce1: Extranonce,
        extranonce2_size: usize,
    },
    /// `mining.set_version_mask`: rolled bits must stay inside this mask from now on.
    VersionMask(VersionMask),
    /// `client.reconnect`: the pool asks us to reconnect (to another host/port, after a wait).
    Reconnect {
        host: Option<String>,
        port: Option<u16>,
        wait: Duration,
    },
    /// `client.show_message`.
    Message(String),
    ShareResult {
        ticket: u64,
        verdict: ShareVerdict,
        /// From handing the submit to the transport to reading the answer.
        latency: Duration,
    },
    /// A line we could not use; the connection carries on.
    Ignored {
        reason: String,
    },
}

/// Why the session cannot go on (the connection should be closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream did not finish the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("mining.subscribe refused: {0}")]
    SubscribeRefused(String),
    #[error("mining.subscribe answer: {0}")]
    BadSubscribe(String),
    #[error("mining.authorize refused for '{user}': {reason}")]
    AuthorizeRefused { user: String, reason: String },
}

/// Why a share could not be submitted right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("upstream session is not ready (handshake not finished)")]
    NotReady,
    #[error("version rolling was not granted by the upstream pool; the share rolls bits {0:08x}")]
    VersionRollingNotGranted(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Configure,
    Subscribe,
    ExtranonceSubscribe,
    Authorize,
    Submit { ticket: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    Ready,
}

/// One upstream conversation (see the module docs).
#[derive(Debug)]
pub struct UpstreamSession {
    cfg: UpstreamConfig,
    phase: Phase,
    started: Instant,
    next_id: u64,
    pending: HashMap<u64, (Pending, Instant)>,
    /// Submit ids in the order sent, for answer timeouts (oldest first).
    submit_order: VecDeque<(u64, Instant)>,
    out: Vec<u8>,
    events: VecDeque<UpstreamEvent>,
    subscribed: Option<(Extranonce, usize)>,
    authorized: bool,
    version_mask: Option<VersionMask>,
    difficulty: Option<Difficulty>,
}

impl UpstreamSession {
    /// Starts the handshake: its first lines are ready in [`Self::poll_transmit`] at once.
    pub fn new(cfg: UpstreamConfig, now: Instant) -> Self {
        let mut s = UpstreamSession {
            cfg,
            phase: Phase::Handshake,
            started: now,
            next_id: 1,
            pending: HashMap::new(),
            submit_order: VecDeque::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            subscribed: None,
            authorized: false,
            version_mask: None,
            difficulty: None,
        };
        if let Some(mask) = s.cfg.version_rolling {
            let body = ClientRequest::Configure(Configure {
                version_rolling: Some(VersionRollingRequest {
                    mask,
                    min_bit_count: 2,
                }),
                ..Configure::default()
            });
            s.send(body, Pending::Configure, now);
        }
        let ua = s.cfg.user_agent.clone();
        s.send(
            ClientRequest::Subscribe {
                user_agent: Some(Cow::Owned(ua)),
                session_id: None,
            },
            Pending::Subscribe,
            now,
        );
        if s.cfg.extranonce_subscribe {
            s.send(
                ClientRequest::ExtranonceSubscribe,
                Pending::ExtranonceSubscribe,
                now,
            );
        }
        let (user, pass) = (s.cfg.username.clone(), s.cfg.password.clone());
        s.send(
            ClientRequest::Authorize {
                username: Cow::Owned(user),
                password: Some(Cow::Owned(pass)),
            },
            Pending::Authorize,
            now,
        );
        s
    }

    fn send(&mut self, body: ClientRequest<'_>, what: Pending, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let line = Request {
            id: RequestId::Number(id),
            body,
        }
        .encode();
        self.out.extend_from_slice(line.as_bytes());
        self.pending.insert(id, (what, now));
        id
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub fn extranonce1(&self) -> Option<Extranonce> {
        self.subscribed.map(|(e, _)| e)
    }

    pub fn extranonce2_size(&self) -> Option<usize> {
        self.subscribed.map(|(_, n)| n)
    }

    pub fn version_mask(&self) -> Option<VersionMask> {
        self.version_mask
    }

    pub fn difficulty(&self) -> Option<Difficulty> {
        self.difficulty
    }

    /// Submits awaiting the pool's answer.
    pub fn in_flight(&self) -> usize {
        self.submit_order.len()
    }

    /// Bytes to send to the pool (everything queued since the last call).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    pub fn poll_event(&mut self) -> Option<UpstreamEvent> {
        self.events.pop_front()
    }

    /// The next instant [`Self::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let answer = self
            .submit_order
            .front()
            .map(|&(_, t)| t + self.cfg.answer_timeout);
        let handshake =
            (self.phase == Phase::Handshake).then(|| self.started + self.cfg.handshake_timeout);
        match (answer, handshake) {
            (Some(a), Some(h)) => Some(a.min(h)),
            (a, h) => a.or(h),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), UpstreamError> {
        if self.phase == Phase::Handshake && now >= self.started + self.cfg.handshake_timeout {
            return Err(UpstreamError::HandshakeTimeout(self.cfg.handshake_timeout));
        }
        while let Some(&(id, sent)) = self.submit_order.front() {
            if now < sent + self.cfg.answer_timeout {
                break;
            }
            self.submit_order.pop_front();
            if let Some((Pending::Submit { ticket }, _)) = self.pending.remove(&id) {
                self.events.push_back(UpstreamEvent::ShareResult {
                    ticket,
                    verdict: ShareVerdict::TimedOut,
                    latency: now - sent,
                });
            }
        }
        Ok(())
    }

    /// Queues a share for the pool. `ticket` comes back in its [`UpstreamEvent::ShareResult`].
    pub fn submit(
        &mut self,
        ticket: u64,
        share: &UpstreamShare,
        now: Instant,
    ) -> Result<(), SubmitError> {
        if self.phase != Phase::Ready {
            return Err(SubmitError::NotReady);
        }
        let version_bits = match (share.version_bits, self.version_mask) {
            (Some(0), None) | (None, _) => None,
            (Some(bits), Some(_)) => Some(bits),
            (Some(bits), None) => return Err(SubmitError::VersionRollingNotGranted(bits)),
        };
        let body = ClientRequest::Submit(Submit {
            worker: Cow::Owned(self.cfg.username.clone()),
            job_id: Cow::Borrowed(share.job_id.as_str()),
            extranonce2: share.extranonce2,
            ntime: share.ntime,
            nonce: share.nonce,
            version_bits,
        });
        let id = self.send(body, Pending::Submit { ticket }, now);
        self.submit_order.push_back((id, now));
        Ok(())
    }

    /// One line from the pool (without its newline).
    pub fn handle_line(&mut self, line: &[u8], now: Instant) -> Result<(), UpstreamError> {
        let msg = match ServerMessage::parse(line) {
            Ok(m) => m,
            Err(e) => {
                self.events.push_back(UpstreamEvent::Ignored {
                    reason: format!("{e}: {}", String::from_utf8_lossy(truncate(line))),
                });
                return Ok(());
            }
        };
        match msg {
            ServerMessage::Response(r) => self.handle_response(r.id, r.result, r.error, now),
            ServerMessage::Notification { body, .. } => {
                self.handle_notification(body);
                Ok(())
            }
            ServerMessage::Unknown { method, .. } => {
                self.events.push_back(UpstreamEvent::Ignored {
                    reason: format!("unknown method '{method}'"),
                });
                Ok(())
            }
        }
    }

    fn handle_notification(&mut self, n: ServerNotification) {
        let ev = match n {
            ServerNotification::Notify(job) => UpstreamEvent::Job(job),
            ServerNotification::SetDifficulty(d) => {
                self.difficulty = Some(d);
                UpstreamEvent::Difficulty(d)
            }
            ServerNotification::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => {
                self.subscribed = Some((extranonce1, extranonce2_size));
                UpstreamEvent::Extranonce {
                    extranonce1,
                    extranonce2_size,
                }
            }
            ServerNotification::SetVersionMask(m) => {
                self.version_mask = Some(m);
                UpstreamEvent::VersionMask(m)
            }
            ServerNotification::Reconnect {
                host,
                port,
                wait_secs,
            } => UpstreamEvent::Reconnect {
                host,
                port,
                wait: Duration::from_secs(wait_secs.unwrap_or(0).min(3600)),
            },
            ServerNotification::ShowMessage(m) => UpstreamEvent::Message(m),
            ServerNotification::Ping => {
                // Answered with "pong" as the original Stratum servers expect.
                self.out
                    .extend_from_slice(b"{\"id\":null,\"result\":\"pong\",\"error\":null}\n");
                return;
            }
        };
        self.events.push_back(ev);
    }

    fn handle_response(
        &mut self,
        id: RequestId,
        result: Value,
        error: Option<StratumError>,
        now: Instant,
    ) -> Result<(), UpstreamError> {
        let Some(n) = id_number(&id) else {
            self.events.push_back(UpstreamEvent::Ignored {
                reason: format!("response with an id we never sent: {id:?}"),
            });
            return Ok(());
        };
        let Some((what, sent)) = self.pending.remove(&n) else {
            self.events.push_back(UpstreamEvent::Ignored {
                reason: format!("response to unknown or expired request {n}"),
            });
            return Ok(());
        };
        let refused = error.clone().or_else(|| {
            (result == Value::Bool(false)).then(|| StratumError::other("refused (result false)"))
        });
        match what {
            Pending::Configure => {
                // `{"version-rolling": true, "version-rolling.mask": "1fffe000"}`; anything
                // else (an error, false, no mask) means no rolling.
                self.version_mask = result
                    .get("version-rolling")
                    .and_then(Value::as_bool)
                    .filter(|&b| b)
                    .and_then(|_| result.get("version-rolling.mask"))
                    .and_then(Value::as_str)
                    .and_then(|m| u32::from_str_radix(m, 16).ok())
                    .map(VersionMask);
            }
            Pending::Subscribe => {
                if let Some(e) = refused {
                    return Err(UpstreamError::SubscribeRefused(e.message.into_owned()));
                }
                self.subscribed = Some(parse_subscribe(&result)?);
            }
            Pending::ExtranonceSubscribe => {
                // Pools that do not know it answer with an error: harmless, ignore.
            }
            Pending::Authorize => {
                if let Some(e) = refused {
                    return Err(UpstreamError::AuthorizeRefused {
                        user: self.cfg.username.clone(),
                        reason: e.message.into_owned(),
                    });
                }
                self.authorized = true;
            }
            Pending::Submit { ticket } => {
                self.submit_order.retain(|&(i, _)| i != n);
                let verdict = match refused {
                    None => ShareVerdict::Accepted,
                    Some(e) => ShareVerdict::Rejected(e),
                };
                self.events.push_back(UpstreamEvent::ShareResult {
                    ticket,
                    verdict,
                    latency: now.saturating_duration_since(sent),
                });
            }
        }
        if self.phase == Phase::Handshake && self.authorized {
            if let Some((extranonce1, extranonce2_size)) = self.subscribed {
                self.phase = Phase::Ready;
                self.events.push_back(UpstreamEvent::Ready {
                    extranonce1,
                    extranonce2_size,
                    version_mask: self.version_mask,
                });
            }
        }
        Ok(())
    }
}

fn id_number(id: &RequestId) -> Option<u64> {
    match id {
        RequestId::Number(n) => Some(*n),
        // Some pools echo ids as strings: `"7"`.
        RequestId::Raw(r) => r.trim_matches('"').parse().ok(),
        RequestId::Null => None,
    }
}

fn truncate(line: &[u8]) -> &[u8] {
    &line[..line.len().min(200)]
}

/// `[[subscriptions...], "extranonce1 hex", extranonce2_size]`.
fn parse_subscribe(result: &Value) -> Result<(Extranonce, usize), UpstreamError> {
    let bad = |why: String| UpstreamError::BadSubscribe(why);
    let a = result
        .as_array()
        .ok_or_else(|| bad(format!("expected an array, got {result}")))?;
    let e1 = a
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| bad("extranonce1 (2nd element) missing or not a string".into()))?;
    let e1 = Extranonce::from_hex(e1).map_err(|e| bad(format!("extranonce1: {e}")))?;
    let size = a
        .get(2)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("extranonce2_size (3rd element) missing or not an integer".into()))?;
    if size == 0 || size > 16 {
        return Err(bad(format!("extranonce2_size {size} is outside 1..=16")));
    }
    Ok((e1, size as usize))
}

/// The error code a pool uses for a share it could not match to a job.
pub fn is_stale(e: &StratumError) -> bool {
    e.code == ErrorCode::JOB_NOT_FOUND || e.message.to_ascii_lowercase().contains("stale")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &mut UpstreamSession) -> Vec<Value> {
        let out = s.poll_transmit().unwrap_or_default();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn events(s: &mut UpstreamSession) -> Vec<UpstreamEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn handshake(now: Instant) -> UpstreamSession {
        let mut s = UpstreamSession::new(UpstreamConfig::new("farm.proxy", "x"), now);
        let sent = lines(&mut s);
        let methods: Vec<&str> = sent.iter().map(|v| v["method"].as_str().unwrap()).collect();
        assert_eq!(
            methods,
            [
                "mining.configure",
                "mining.subscribe",
                "mining.extranonce.subscribe",
                "mining.authorize"
            ]
        );
        s.handle_line(
            br#"{"id":1,"result":{"version-rolling":true,"version-rolling.mask":"1fffe000"},"error":null}"#,
            now,
        )
        .unwrap();
        s.handle_line(
            br#"{"id":2,"result":[[["mining.set_difficulty","1"],["mining.notify","1"]],"aabbccdd",8],"error":null}"#,
            now,
        )
        .unwrap();
        s.handle_line(br#"{"id":3,"result":true,"error":null}"#, now)
            .unwrap();
        assert!(!s.is_ready(), "ready only after authorize");
        s.handle_line(br#"{"id":4,"result":true,"error":null}"#, now)
            .unwrap();
        s
    }

    #[test]
    fn handshake_in_firmware_order_then_ready_with_extranonce_and_mask() {
        let now = Instant::now();
        let mut s = handshake(now);
        assert!(s.is_ready());
        assert_eq!(
            events(&mut s),
            [UpstreamEvent::Ready {
                extranonce1: Extranonce::from_hex("aabbccdd").unwrap(),
                extranonce2_size: 8,
                version_mask: Some(VersionMask(0x1fff_e000)),
            }]
        );
        assert_eq!(s.poll_timeout(), None, "no handshake timer once ready");
    }

    #[test]
    fn submits_carry_the_pool_job_id_and_answers_come_back_by_ticket() {
        let now = Instant::now();
        let mut s = handshake(now);
        events(&mut s);
        let share = UpstreamShare {
            job_id: JobId::new("up-7"),
            extranonce2: Extranonce::from_hex("0001020300000009").unwrap(),
            ntime: 0x6500_0000,
            nonce: 0xdead_beef,
            version_bits: Some(0x0000_2000),
        };
        s.submit(41, &share, now).unwrap();
        s.submit(42, &share, now).unwrap();
        let sent = lines(&mut s);
        assert_eq!(
            sent[0]["params"],
            serde_json::json!([
                "farm.proxy",
                "up-7",
                "0001020300000009",
                "65000000",
                "deadbeef",
                "00002000"
            ])
        );
        let later = now + Duration::from_millis(30);
        s.handle_line(
            br#"{"id":6,"result":null,"error":[23,"Low difficulty share",null]}"#,
            later,
        )
        .unwrap();
        s.handle_line(br#"{"id":5,"result":true,"error":null}"#, later)
            .unwrap();
        let ev = events(&mut s);
        assert_eq!(
            ev[0],
            UpstreamEvent::ShareResult {
                ticket: 42,
                verdict: ShareVerdict::Rejected(StratumError::new(
                    ErrorCode::LOW_DIFFICULTY,
                    "Low difficulty share"
                )),
                latency: Duration::from_millis(30),
            }
        );
        assert!(matches!(
            ev[1],
            UpstreamEvent::ShareResult {
                ticket: 41,
                verdict: ShareVerdict::Accepted,
                ..
            }
        ));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn unanswered_submit_times_out_as_its_own_verdict() {
        let now = Instant::now();
        let mut s = handshake(now);
        events(&mut s);
        let share = UpstreamShare {
            job_id: JobId::new("1"),
            extranonce2: Extranonce::from_hex("00000000").unwrap(),
            ntime: 1,
            nonce: 2,
            version_bits: None,
        };
        s.submit(9, &share, now).unwrap();
        let deadline = s.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(30));
        s.handle_timeout(deadline).unwrap();
        assert!(matches!(
            events(&mut s)[..],
            [UpstreamEvent::ShareResult {
                ticket: 9,
                verdict: ShareVerdict::TimedOut,
                ..
            }]
        ));
        // A late answer is reported as ignored, not as a second verdict.
        s.handle_line(br#"{"id":5,"result":true,"error":null}"#, deadline)
            .unwrap();
        assert!(matches!(
            events(&mut s)[..],
            [UpstreamEvent::Ignored { .. }]
        ));
    }

    #[test]
    fn refused_authorize_names_the_user_and_the_pool_reason() {
        let now = Instant::now();
        let mut s = UpstreamSession::new(UpstreamConfig::new("nobody", "x"), now);
        lines(&mut s);
        let e = s
            .handle_line(
                br#"{"id":4,"result":false,"error":[24,"Unauthorized worker",null]}"#,
                now,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mining.authorize refused for 'nobody': Unauthorized worker"
        );
    }

    #[test]
    fn handshake_times_out() {
        let now = Instant::now();
        let mut s = UpstreamSession::new(UpstreamConfig::new("u", "x"), now);
        let t = s.poll_timeout().unwrap();
        assert!(s.handle_timeout(t - Duration::from_millis(1)).is_ok());
        assert_eq!(
            s.handle_timeout(t).unwrap_err(),
            UpstreamError::HandshakeTimeout(Duration::from_secs(10))
        );
    }

    #[test]
    fn set_extranonce_and_set_version_mask_update_the_session() {
        let now = Instant::now();
        let mut s = handshake(now);
        events(&mut s);
        s.handle_line(
            br#"{"id":null,"method":"mining.set_extranonce","params":["01020304",6]}"#,
            now,
        )
        .unwrap();
        s.handle_line(
            br#"{"id":null,"method":"mining.set_version_mask","params":["00ffe000"]}"#,
            now,
        )
        .unwrap();
        assert_eq!(s.extranonce1().unwrap().to_hex(), "01020304");
        assert_eq!(s.extranonce2_size(), Some(6));
        assert_eq!(s.version_mask(), Some(VersionMask(0x00ff_e000)));
        assert_eq!(events(&mut s).len(), 2);
    }

    #[test]
    fn garbage_lines_are_reported_and_survived() {
        let now = Instant::now();
        let mut s = handshake(now);
        events(&mut s);
        s.handle_line(b"\x00\x01 not json", now).unwrap();
        s.handle_line(br#"{"id":null,"method":"mining.notify","params":[1]}"#, now)
            .unwrap();
        let ev = events(&mut s);
        assert_eq!(ev.len(), 2);
        assert!(ev
            .iter()
            .all(|e| matches!(e, UpstreamEvent::Ignored { .. })));
        assert!(s.is_ready());
    }

    #[test]
    fn without_granted_rolling_a_rolled_share_is_refused_before_sending() {
        let now = Instant::now();
        let mut cfg = UpstreamConfig::new("u", "x");
        cfg.version_rolling = None;
        cfg.extranonce_subscribe = false;
        let mut s = UpstreamSession::new(cfg, now);
        lines(&mut s);
        s.handle_line(br#"{"id":1,"result":[[],"00",8],"error":null}"#, now)
            .unwrap();
        s.handle_line(br#"{"id":2,"result":true,"error":null}"#, now)
            .unwrap();
        assert!(s.is_ready());
        let share = UpstreamShare {
            job_id: JobId::new("1"),
            extranonce2: Extranonce::from_hex("00000000").unwrap(),
            ntime: 1,
            nonce: 2,
            version_bits: Some(0x2000),
        };
        assert_eq!(
            s.submit(1, &share, now),
            Err(SubmitError::VersionRollingNotGranted(0x2000))
        );
    }
}
