//! Typed Stratum messages: parsing and encoding both ways.
//!
//! Requests from miners are parsed with [`super::scan`] (no JSON tree; parameters are decoded
//! straight from their text), because `mining.submit` is the per-share hot path. Messages from a
//! pool to a client (jobs, difficulty) are rare and parsed with serde_json.

use super::error::{ErrorCode, ProtocolError, StratumError};
use super::scan::{scan_envelope, scan_into, InlineParams};
use crate::work::{CompactTarget, Difficulty, Extranonce, Job, JobId, PrevHash, VersionMask};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::fmt::Write as _;

/// A JSON-RPC id, kept as the peer sent it so it can be echoed byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RequestId {
    Null,
    Number(u64),
    /// Any other JSON value (strings, negative or fractional numbers), as raw JSON text.
    Raw(Box<str>),
}

impl RequestId {
    fn from_raw(raw: &str) -> Self {
        if raw == "null" {
            return RequestId::Null;
        }
        if !raw.is_empty() && raw.len() < 20 && raw.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = raw.parse() {
                return RequestId::Number(n);
            }
        }
        RequestId::Raw(raw.into())
    }

    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            RequestId::Null => out.extend_from_slice(b"null"),
            RequestId::Number(n) => {
                let mut buf = itoa_buf(*n);
                out.extend_from_slice(buf.as_bytes_mut());
            }
            RequestId::Raw(r) => out.extend_from_slice(r.as_bytes()),
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            RequestId::Null => Value::Null,
            RequestId::Number(n) => json!(n),
            RequestId::Raw(r) => serde_json::from_str(r).unwrap_or(Value::Null),
        }
    }

    pub fn from_value(v: &Value) -> Self {
        match v {
            Value::Null => RequestId::Null,
            Value::Number(n) if n.is_u64() => RequestId::Number(n.as_u64().unwrap_or(0)),
            other => RequestId::Raw(other.to_string().into()),
        }
    }
}

struct SmallDec {
    buf: [u8; 20],
    start: usize,
}
impl SmallDec {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}
fn itoa_buf(mut n: u64) -> SmallDec {
    let mut buf = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    SmallDec { buf, start: i }
}

/// BIP310 version-rolling request parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionRollingRequest {
    pub mask: VersionMask,
    pub min_bit_count: u32,
}

/// `mining.configure` (BIP310): the extensions a miner asks for, with their parameters.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Configure {
    pub version_rolling: Option<VersionRollingRequest>,
    pub minimum_difficulty: Option<Difficulty>,
    pub subscribe_extranonce: bool,
    /// Extensions we do not know; BIP310 says to answer them with `false`, not an error.
    pub unknown: Vec<String>,
}

/// `mining.submit`: a share. Borrowed from the line on the hot path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit<'a> {
    pub worker: Cow<'a, str>,
    pub job_id: Cow<'a, str>,
    pub extranonce2: Extranonce,
    pub ntime: u32,
    pub nonce: u32,
    /// BIP310 6th parameter: the rolled version bits.
    pub version_bits: Option<u32>,
}

/// A request from a miner (client) to a pool (server).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientRequest<'a> {
    Subscribe {
        user_agent: Option<Cow<'a, str>>,
        session_id: Option<Cow<'a, str>>,
    },
    Authorize {
        username: Cow<'a, str>,
        password: Option<Cow<'a, str>>,
    },
    Submit(Submit<'a>),
    Configure(Configure),
    SuggestDifficulty(Difficulty),
    ExtranonceSubscribe,
    /// A client-initiated ping (some proxies send it); answered with "pong".
    Ping,
    /// A method we do not implement; answered with error 20 naming it.
    Unknown(Cow<'a, str>),
}

/// A parsed request line.
#[derive(Clone, Debug, PartialEq)]
pub struct Request<'a> {
    pub id: RequestId,
    pub body: ClientRequest<'a>,
}

/// A request that could not be parsed, with its id when one was readable so the error can be
/// sent back on the right request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseFailure {
    pub id: RequestId,
    pub error: ProtocolError,
}

fn p_err(method: &str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::params(method, reason)
}

/// A string parameter: borrowed when it has no escapes. Numbers are accepted as their text
/// (some firmware sends numeric job ids).
fn str_param<'a>(method: &str, field: &str, raw: &'a str) -> Result<Cow<'a, str>, ProtocolError> {
    let b = raw.as_bytes();
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        let inner = &raw[1..raw.len() - 1];
        if !inner.contains('\\') {
            return Ok(Cow::Borrowed(inner));
        }
        return serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|e| p_err(method, format!("{field}: bad string: {e}")));
    }
    if !b.is_empty() && (b[0] == b'-' || b[0].is_ascii_digit()) {
        return Ok(Cow::Borrowed(raw));
    }
    Err(p_err(
        method,
        format!("{field} must be a string, got {raw}"),
    ))
}

fn opt_str_param<'a>(
    method: &str,
    field: &str,
    raw: Option<&&'a str>,
) -> Result<Option<Cow<'a, str>>, ProtocolError> {
    match raw {
        None => Ok(None),
        Some(&"null") => Ok(None),
        Some(r) => str_param(method, field, r).map(Some),
    }
}

/// A 32-bit field sent as exactly 8 hex characters, big-endian (ntime, nonce, version bits).
#[inline]
fn hex_u32(method: &str, field: &str, raw: &str) -> Result<u32, ProtocolError> {
    // The usual form, a quoted string of 8 hex digits, decoded directly; the rest (and every
    // error) goes the general way.
    if let [b'"', digits @ .., b'"'] = raw.as_bytes() {
        if let Some(v) = decode_hex_u32(digits) {
            return Ok(v);
        }
    }
    hex_u32_general(method, field, raw)
}

/// Exactly 8 hex digits (either case) as a big-endian u32.
#[inline]
fn decode_hex_u32(digits: &[u8]) -> Option<u32> {
    if digits.len() != 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | d as u32)
    })
}

#[cold]
fn hex_u32_general(method: &str, field: &str, raw: &str) -> Result<u32, ProtocolError> {
    let s = str_param(method, field, raw)?;
    if s.len() != 8 {
        return Err(p_err(
            method,
            format!("{field} has {} hex characters, expected 8", s.len()),
        ));
    }
    u32::from_str_radix(&s, 16)
        .ok()
        .filter(|_| s.bytes().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| p_err(method, format!("{field} is not hex: '{s}'")))
}

fn number_param(method: &str, field: &str, raw: &str) -> Result<f64, ProtocolError> {
    let s = raw.trim_matches('"');
    s.parse::<f64>()
        .map_err(|_| p_err(method, format!("{field} is not a number: {raw}")))
}

impl<'a> Request<'a> {
    /// Parses one request line (without its newline).
    pub fn parse(line: &'a [u8]) -> Result<Request<'a>, ParseFailure> {
        let text = std::str::from_utf8(line).map_err(|_| ParseFailure {
            id: RequestId::Null,
            error: ProtocolError::NotUtf8,
        })?;
        // Parameters stay on the stack: no allocation on the share path.
        let mut inline = InlineParams::new();
        let mut has_params = false;
        let head = scan_into(text, &mut inline, &mut has_params).map_err(|e| ParseFailure {
            id: RequestId::Null,
            error: e.into(),
        })?;
        let id = head.id.map(RequestId::from_raw).unwrap_or(RequestId::Null);
        let method = match head.method {
            Some(m) => m,
            None => {
                return Err(ParseFailure {
                    id,
                    error: ProtocolError::Other("request has no \"method\"".into()),
                })
            }
        };
        let body = match inline.as_slice() {
            Some(params) => parse_body(method, params),
            // More parameters than any Stratum method takes: rescan into a Vec, which gives the
            // same errors (the line already scanned once, so this cannot fail).
            None => match scan_envelope(text) {
                Ok(env) => parse_body(method, &env.params),
                Err(e) => Err(e.into()),
            },
        };
        match body {
            Ok(body) => Ok(Request { id, body }),
            Err(error) => Err(ParseFailure { id, error }),
        }
    }

    /// Encodes as a JSON line (client side), newline included.
    pub fn encode(&self) -> String {
        let (method, params): (&str, Value) = match &self.body {
            ClientRequest::Subscribe {
                user_agent,
                session_id,
            } => {
                let mut p = vec![];
                if let Some(ua) = user_agent {
                    p.push(json!(ua));
                    if let Some(s) = session_id {
                        p.push(json!(s));
                    }
                }
                ("mining.subscribe", Value::Array(p))
            }
            ClientRequest::Authorize { username, password } => (
                "mining.authorize",
                json!([username, password.as_deref().unwrap_or("")]),
            ),
            ClientRequest::Submit(s) => {
                let mut p = vec![
                    json!(s.worker),
                    json!(s.job_id),
                    json!(s.extranonce2.to_hex()),
                    json!(format!("{:08x}", s.ntime)),
                    json!(format!("{:08x}", s.nonce)),
                ];
                if let Some(v) = s.version_bits {
                    p.push(json!(format!("{v:08x}")));
                }
                ("mining.submit", Value::Array(p))
            }
            ClientRequest::Configure(c) => {
                let mut names = vec![];
                let mut params = serde_json::Map::new();
                if let Some(vr) = c.version_rolling {
                    names.push(json!("version-rolling"));
                    params.insert(
                        "version-rolling.mask".into(),
                        json!(format!("{:08x}", vr.mask.0)),
                    );
                    params.insert(
                        "version-rolling.min-bit-count".into(),
                        json!(vr.min_bit_count),
                    );
                }
                if let Some(d) = c.minimum_difficulty {
                    names.push(json!("minimum-difficulty"));
                    params.insert("minimum-difficulty.value".into(), json!(d.value()));
                }
                if c.subscribe_extranonce {
                    names.push(json!("subscribe-extranonce"));
                }
                for u in &c.unknown {
                    names.push(json!(u));
                }
                ("mining.configure", json!([names, params]))
            }
            ClientRequest::SuggestDifficulty(d) => {
                ("mining.suggest_difficulty", json!([d.value()]))
            }
            ClientRequest::ExtranonceSubscribe => ("mining.extranonce.subscribe", json!([])),
            ClientRequest::Ping => ("mining.ping", json!([])),
            ClientRequest::Unknown(m) => (m.as_ref(), json!([])),
        };
        let mut s =
            json!({"id": self.id.to_value(), "method": method, "params": params}).to_string();
        s.push('\n');
        s
    }
}

fn parse_body<'a>(method: &'a str, p: &[&'a str]) -> Result<ClientRequest<'a>, ProtocolError> {
    Ok(match method {
        "mining.submit" => {
            if p.len() != 5 && p.len() != 6 {
                return Err(p_err(
                    method,
                    format!("expected 5 or 6 params, got {}", p.len()),
                ));
            }
            let ex2 = str_param(method, "extranonce2", p[2])?;
            let extranonce2 = Extranonce::from_hex(&ex2)
                .map_err(|e| p_err(method, format!("extranonce2: {e}")))?;
            ClientRequest::Submit(Submit {
                worker: str_param(method, "worker", p[0])?,
                job_id: str_param(method, "job_id", p[1])?,
                extranonce2,
                ntime: hex_u32(method, "ntime", p[3])?,
                nonce: hex_u32(method, "nonce", p[4])?,
                version_bits: match p.get(5) {
                    Some(v) => Some(hex_u32(method, "version_bits", v)?),
                    None => None,
                },
            })
        }
        "mining.subscribe" => ClientRequest::Subscribe {
            user_agent: opt_str_param(method, "user_agent", p.first())?,
            session_id: opt_str_param(method, "session_id", p.get(1))?,
        },
        "mining.authorize" => {
            let username = match p.first() {
                Some(u) => str_param(method, "username", u)?,
                None => return Err(p_err(method, "missing username")),
            };
            ClientRequest::Authorize {
                username,
                password: opt_str_param(method, "password", p.get(1))?,
            }
        }
        "mining.configure" => ClientRequest::Configure(parse_configure(p)?),
        "mining.suggest_difficulty" => {
            let raw = p
                .first()
                .ok_or_else(|| p_err(method, "missing difficulty"))?;
            let d = number_param(method, "difficulty", raw)?;
            ClientRequest::SuggestDifficulty(
                Difficulty::new(d).map_err(|e| p_err(method, e.to_string()))?,
            )
        }
        "mining.extranonce.subscribe" => ClientRequest::ExtranonceSubscribe,
        "mining.ping" => ClientRequest::Ping,
        other => ClientRequest::Unknown(Cow::Borrowed(other)),
    })
}

fn parse_configure(p: &[&str]) -> Result<Configure, ProtocolError> {
    const M: &str = "mining.configure";
    let names: Vec<String> = match p.first() {
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| p_err(M, format!("extensions must be a list of strings: {e}")))?,
        None => return Err(p_err(M, "missing extension list")),
    };
    let params: serde_json::Map<String, Value> = match p.get(1) {
        Some(raw) if *raw != "null" => serde_json::from_str(raw)
            .map_err(|e| p_err(M, format!("extension parameters must be an object: {e}")))?,
        _ => serde_json::Map::new(),
    };
    let mut c = Configure::default();
    for name in names {
        match name.as_str() {
            "version-rolling" => {
                let mask = match params.get("version-rolling.mask") {
                    Some(Value::String(s)) => u32::from_str_radix(s.trim_start_matches("0x"), 16)
                        .map_err(|_| {
                        p_err(M, format!("version-rolling.mask is not hex: '{s}'"))
                    })?,
                    Some(other) => {
                        return Err(p_err(
                            M,
                            format!("version-rolling.mask must be a hex string, got {other}"),
                        ))
                    }
                    // BIP310: a missing mask means the miner accepts any bits.
                    None => 0xffff_ffff,
                };
                let min_bit_count = match params.get("version-rolling.min-bit-count") {
                    Some(v) => v.as_u64().ok_or_else(|| {
                        p_err(
                            M,
                            format!("version-rolling.min-bit-count must be an integer, got {v}"),
                        )
                    })? as u32,
                    None => 0,
                };
                c.version_rolling = Some(VersionRollingRequest {
                    mask: VersionMask(mask),
                    min_bit_count,
                });
            }
            "minimum-difficulty" => {
                let v = params
                    .get("minimum-difficulty.value")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| p_err(M, "minimum-difficulty.value must be a number"))?;
                c.minimum_difficulty =
                    Some(Difficulty::new(v).map_err(|e| p_err(M, e.to_string()))?);
            }
            "subscribe-extranonce" => c.subscribe_extranonce = true,
            _ => c.unknown.push(name),
        }
    }
    Ok(c)
}

/// Writes `{"id":…,"result":true|false,"error":null}\n` — the answer to every accepted share.
pub fn encode_bool_result(id: &RequestId, result: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    id.write_json(out);
    out.extend_from_slice(if result {
        b",\"result\":true,\"error\":null}\n".as_slice()
    } else {
        b",\"result\":false,\"error\":null}\n".as_slice()
    });
}

/// Writes a response carrying an arbitrary result.
pub fn encode_result(id: &RequestId, result: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    id.write_json(out);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.to_string().as_bytes());
    out.extend_from_slice(b",\"error\":null}\n");
}

/// Writes `{"id":…,"result":null,"error":[code,"message",null]}\n`.
pub fn encode_error(id: &RequestId, err: &StratumError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    id.write_json(out);
    let mut s = String::with_capacity(64);
    let _ = writeln!(
        s,
        ",\"result\":null,\"error\":[{},{},null]}}",
        err.code.0,
        Value::String(err.message.to_string())
    );
    out.extend_from_slice(s.as_bytes());
}

/// A notification (or server-initiated request) from pool to miner.
// Jobs dominate the size; notifications are rare and short-lived, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ServerNotification {
    Notify(Job),
    SetDifficulty(Difficulty),
    SetExtranonce {
        extranonce1: Extranonce,
        extranonce2_size: usize,
    },
    SetVersionMask(VersionMask),
    Reconnect {
        host: Option<String>,
        port: Option<u16>,
        wait_secs: Option<u64>,
    },
    ShowMessage(String),
    Ping,
}

impl ServerNotification {
    pub fn method(&self) -> &'static str {
        match self {
            ServerNotification::Notify(_) => "mining.notify",
            ServerNotification::SetDifficulty(_) => "mining.set_difficulty",
            ServerNotification::SetExtranonce { .. } => "mining.set_extranonce",
            ServerNotification::SetVersionMask(_) => "mining.set_version_mask",
            ServerNotification::Reconnect { .. } => "client.reconnect",
            ServerNotification::ShowMessage(_) => "client.show_message",
            ServerNotification::Ping => "mining.ping",
        }
    }

    fn params(&self) -> Value {
        match self {
            ServerNotification::Notify(j) => json!([
                j.id.as_str(),
                j.prev_hash.to_stratum_hex(),
                hex::encode(&j.coinb1),
                hex::encode(&j.coinb2),
                j.merkle_branch.iter().map(hex::encode).collect::<Vec<_>>(),
                format!("{:08x}", j.version),
                format!("{:08x}", j.nbits.0),
                format!("{:08x}", j.ntime),
                j.clean_jobs
            ]),
            ServerNotification::SetDifficulty(d) => json!([d.value()]),
            ServerNotification::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => json!([extranonce1.to_hex(), extranonce2_size]),
            ServerNotification::SetVersionMask(m) => json!([format!("{:08x}", m.0)]),
            ServerNotification::Reconnect {
                host,
                port,
                wait_secs,
            } => {
                let mut p = vec![];
                if let Some(h) = host {
                    p.push(json!(h));
                    if let Some(port) = port {
                        p.push(json!(port));
                        if let Some(w) = wait_secs {
                            p.push(json!(w));
                        }
                    }
                }
                Value::Array(p)
            }
            ServerNotification::ShowMessage(m) => json!([m]),
            ServerNotification::Ping => json!([]),
        }
    }

    /// Encodes as a JSON line; `id` is null for notifications.
    pub fn encode(&self, id: &RequestId) -> String {
        let mut s = json!({"id": id.to_value(), "method": self.method(), "params": self.params()})
            .to_string();
        s.push('\n');
        s
    }
}

/// A response to one of the client's requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: RequestId,
    pub result: Value,
    pub error: Option<StratumError>,
}

/// Anything a pool may send to a client.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    Response(Response),
    Notification {
        id: RequestId,
        body: ServerNotification,
    },
    /// A method we do not know (e.g. a pool-specific extension): kept by name.
    Unknown {
        id: RequestId,
        method: String,
    },
}

fn v_str<'v>(method: &str, field: &str, v: Option<&'v Value>) -> Result<&'v str, ProtocolError> {
    v.and_then(Value::as_str)
        .ok_or_else(|| p_err(method, format!("{field} must be a string")))
}

fn v_hex_u32(method: &str, field: &str, v: Option<&Value>) -> Result<u32, ProtocolError> {
    let s = v_str(method, field, v)?;
    if s.len() != 8 {
        return Err(p_err(
            method,
            format!("{field} has {} hex characters, expected 8", s.len()),
        ));
    }
    u32::from_str_radix(s, 16).map_err(|_| p_err(method, format!("{field} is not hex: '{s}'")))
}

fn v_hex_bytes(method: &str, field: &str, v: Option<&Value>) -> Result<Vec<u8>, ProtocolError> {
    let s = v_str(method, field, v)?;
    hex::decode(s).map_err(|e| p_err(method, format!("{field} is not hex: {e}")))
}

/// The id of `{"id":N,"result":true,"error":null}` written exactly so (as [`encode_result`]
/// writes an accepted share's answer): the line a miner reads most, handled without building a
/// JSON tree. Any other spelling goes through the full parser.
fn plain_accept_id(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (num, tail) = rest.split_at(digits);
    if tail != b",\"result\":true,\"error\":null}" || num.is_empty() {
        return None;
    }
    // JSON allows no leading zero.
    if num.len() > 1 && num[0] == b'0' {
        return None;
    }
    std::str::from_utf8(num).ok()?.parse().ok()
}

impl ServerMessage {
    /// Parses one line received from a pool.
    pub fn parse(line: &[u8]) -> Result<ServerMessage, ProtocolError> {
        if let Some(id) = plain_accept_id(line) {
            return Ok(ServerMessage::Response(Response {
                id: RequestId::Number(id),
                result: Value::Bool(true),
                error: None,
            }));
        }
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| ProtocolError::Other(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ProtocolError::Other("message is not a JSON object".into()))?;
        let id = obj
            .get("id")
            .map(RequestId::from_value)
            .unwrap_or(RequestId::Null);
        let method = match obj.get("method") {
            Some(Value::String(m)) => m.as_str(),
            Some(Value::Null) | None => {
                let error = match obj.get("error") {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(a)) => Some(StratumError::new(
                        ErrorCode(a.first().and_then(Value::as_i64).unwrap_or(20)),
                        a.get(1)
                            .and_then(Value::as_str)
                            .unwrap_or("unknown error")
                            .to_string(),
                    )),
                    // Some pools send {"code":..,"message":..} objects.
                    Some(Value::Object(o)) => Some(StratumError::new(
                        ErrorCode(o.get("code").and_then(Value::as_i64).unwrap_or(20)),
                        o.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("unknown error")
                            .to_string(),
                    )),
                    Some(other) => Some(StratumError::other(other.to_string())),
                };
                return Ok(ServerMessage::Response(Response {
                    id,
                    result: obj.get("result").cloned().unwrap_or(Value::Null),
                    error,
                }));
            }
            Some(other) => {
                return Err(ProtocolError::Other(format!(
                    "method must be a string, got {other}"
                )))
            }
        };
        let empty = vec![];
        let p = match obj.get("params") {
            Some(Value::Array(a)) => a,
            None | Some(Value::Null) => &empty,
            Some(_) => return Err(p_err(method, "params must be an array")),
        };
        let body = match method {
            "mining.notify" => {
                if p.len() < 9 {
                    return Err(p_err(method, format!("expected 9 params, got {}", p.len())));
                }
                let prev = v_str(method, "prevhash", p.get(1))?;
                let prev_hash = PrevHash::from_stratum_hex(prev)
                    .map_err(|e| p_err(method, format!("prevhash: {e}")))?;
                let branch = p[4]
                    .as_array()
                    .ok_or_else(|| p_err(method, "merkle_branch must be a list"))?
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mut out = [0u8; 32];
                        let s = b.as_str().unwrap_or("");
                        hex::decode_to_slice(s, &mut out)
                            .map_err(|e| p_err(method, format!("merkle_branch[{i}]: {e}")))?;
                        Ok(out)
                    })
                    .collect::<Result<Vec<_>, ProtocolError>>()?;
                let job_id = match &p[0] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(p_err(method, "job_id must be a string")),
                };
                ServerNotification::Notify(Job::new(
                    JobId::new(&job_id),
                    prev_hash,
                    v_hex_bytes(method, "coinb1", p.get(2))?,
                    v_hex_bytes(method, "coinb2", p.get(3))?,
                    branch,
                    v_hex_u32(method, "version", p.get(5))?,
                    CompactTarget(v_hex_u32(method, "nbits", p.get(6))?),
                    v_hex_u32(method, "ntime", p.get(7))?,
                    p[8].as_bool()
                        .ok_or_else(|| p_err(method, "clean_jobs must be a boolean"))?,
                ))
            }
            "mining.set_difficulty" => {
                let d = p
                    .first()
                    .and_then(Value::as_f64)
                    .ok_or_else(|| p_err(method, "difficulty must be a number"))?;
                ServerNotification::SetDifficulty(
                    Difficulty::new(d).map_err(|e| p_err(method, e.to_string()))?,
                )
            }
            "mining.set_extranonce" => {
                let e1 = v_str(method, "extranonce1", p.first())?;
                ServerNotification::SetExtranonce {
                    extranonce1: Extranonce::from_hex(e1)
                        .map_err(|e| p_err(method, format!("extranonce1: {e}")))?,
                    extranonce2_size: p
                        .get(1)
                        .and_then(Value::as_u64)
                        .ok_or_else(|| p_err(method, "extranonce2_size must be an integer"))?
                        as usize,
                }
            }
            "mining.set_version_mask" => ServerNotification::SetVersionMask(VersionMask(
                v_hex_u32(method, "mask", p.first())?,
            )),
            "client.reconnect" => ServerNotification::Reconnect {
                host: p.first().and_then(Value::as_str).map(str::to_string),
                port: p.get(1).and_then(|v| {
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .and_then(|n| u16::try_from(n).ok())
                }),
                wait_secs: p.get(2).and_then(Value::as_u64),
            },
            "client.show_message" => ServerNotification::ShowMessage(
                p.first().and_then(Value::as_str).unwrap_or("").to_string(),
            ),
            "mining.ping" => ServerNotification::Ping,
            other => {
                return Ok(ServerMessage::Unknown {
                    id,
                    method: other.to_string(),
                })
            }
        };
        Ok(ServerMessage::Notification { id, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash256;
    use proptest::prelude::*;

    #[test]
    fn a_plain_accept_parses_as_the_full_parser_would() {
        let slow = |line: &[u8]| {
            let v: Value = serde_json::from_slice(line).unwrap();
            Response {
                id: RequestId::from_value(&v["id"]),
                result: v["result"].clone(),
                error: None,
            }
        };
        for line in [
            &br#"{"id":7,"result":true,"error":null}"#[..],
            br#"{"id":0,"result":true,"error":null}"#,
            br#"{"id":18446744073709551615,"result":true,"error":null}"#,
        ] {
            assert_eq!(
                plain_accept_id(line).map(RequestId::Number),
                Some(slow(line).id)
            );
            assert_eq!(
                ServerMessage::parse(line).unwrap(),
                ServerMessage::Response(slow(line))
            );
        }
        // Everything else takes the full parser (and gets its verdict).
        for line in [
            &br#"{"id":07,"result":true,"error":null}"#[..],
            br#"{"id":18446744073709551616,"result":true,"error":null}"#,
            br#"{"id":7,"result":true,"error":null} "#,
            br#"{"id": 7,"result":true,"error":null}"#,
            br#"{"id":7,"result":false,"error":null}"#,
            br#"{"id":"7","result":true,"error":null}"#,
            br#"{"id":,"result":true,"error":null}"#,
        ] {
            assert_eq!(
                plain_accept_id(line),
                None,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(ServerMessage::parse(br#"{"id":07,"result":true,"error":null}"#).is_err());
        assert_eq!(
            ServerMessage::parse(br#"{"id": 7,"result":true,"error":null}"#).unwrap(),
            ServerMessage::Response(slow(br#"{"id":7,"result":true,"error":null}"#))
        );
    }

    #[test]
    fn submit_with_five_params_parses_on_the_fast_path() {
        let r = Request::parse(
            br#"{"params": ["slush.miner1", "bf", "00000001", "504e86ed", "b2957c02"], "id": 4, "method": "mining.submit"}"#,
        )
        .unwrap();
        assert_eq!(r.id, RequestId::Number(4));
        match r.body {
            ClientRequest::Submit(s) => {
                assert_eq!(s.worker, "slush.miner1");
                assert_eq!(s.job_id, "bf");
                assert_eq!(s.extranonce2.as_bytes(), &[0, 0, 0, 1]);
                assert_eq!(s.ntime, 0x504e86ed);
                assert_eq!(s.nonce, 0xb2957c02);
                assert_eq!(s.version_bits, None);
                assert!(matches!(s.worker, Cow::Borrowed(_)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn submit_with_version_bits_upper_case_hex_and_string_id() {
        let r = Request::parse(
            br#"{"id":"a1","method":"mining.submit","params":["w","1","0A0B0C0D","5E9A0B0C","DEADBEEF","1FFFE000"]}"#,
        )
        .unwrap();
        assert_eq!(r.id, RequestId::Raw("\"a1\"".into()));
        let ClientRequest::Submit(s) = r.body else {
            panic!()
        };
        assert_eq!(s.version_bits, Some(0x1fffe000));
        assert_eq!(s.nonce, 0xdeadbeef);
    }

    #[test]
    fn submit_with_too_many_params_names_the_count() {
        let f = Request::parse(
            br#"{"id":9,"method":"mining.submit","params":["w","1","00","5e9a0b0c","deadbeef","1fffe000",1,2,3,4]}"#,
        )
        .unwrap_err();
        assert_eq!(f.id, RequestId::Number(9));
        assert_eq!(
            f.error.to_string(),
            "mining.submit: expected 5 or 6 params, got 10"
        );
        // Methods that ignore extra params still parse when there are more than fit inline.
        let r = Request::parse(
            br#"{"id":1,"method":"mining.subscribe","params":["ua","s",1,2,3,4,5,6,7,8]}"#,
        )
        .unwrap();
        assert_eq!(
            r.body,
            ClientRequest::Subscribe {
                user_agent: Some("ua".into()),
                session_id: Some("s".into())
            }
        );
    }

    #[test]
    fn hex_u32_fast_path_agrees_with_the_general_one() {
        for s in ["00000000", "ffffffff", "DEADbeef", "0a0B0c0D", "12345678"] {
            let quoted = format!("\"{s}\"");
            assert_eq!(
                hex_u32("m", "f", &quoted).unwrap(),
                hex_u32_general("m", "f", &quoted).unwrap()
            );
        }
        for bad in [
            "\"+1234567\"",
            "\"1234567g\"",
            "\"123456789\"",
            "\" 1234567\"",
        ] {
            assert!(hex_u32("m", "f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn submit_errors_name_the_field() {
        let f = Request::parse(
            br#"{"id":9,"method":"mining.submit","params":["w","1","00","5e9a0b0","deadbeef"]}"#,
        )
        .unwrap_err();
        assert_eq!(f.id, RequestId::Number(9));
        assert_eq!(
            f.error.to_string(),
            "mining.submit: ntime has 7 hex characters, expected 8"
        );
        let f = Request::parse(
            br#"{"id":9,"method":"mining.submit","params":["w","1","zz","5e9a0b0c","deadbeef"]}"#,
        )
        .unwrap_err();
        assert!(f.error.to_string().contains("extranonce2"), "{}", f.error);
        let f =
            Request::parse(br#"{"id":9,"method":"mining.submit","params":["w","1"]}"#).unwrap_err();
        assert_eq!(
            f.error.to_string(),
            "mining.submit: expected 5 or 6 params, got 2"
        );
        let f = Request::parse(
            br#"{"id":9,"method":"mining.submit","params":["w","1","00","5e9a0b0c","xxxxxxxx"]}"#,
        )
        .unwrap_err();
        assert_eq!(
            f.error.to_string(),
            "mining.submit: nonce is not hex: 'xxxxxxxx'"
        );
    }

    #[test]
    fn subscribe_authorize_suggest_and_configure() {
        let r = Request::parse(
            br#"{"id":1,"method":"mining.subscribe","params":["bmminer/2.0.0","deadbeef"]}"#,
        )
        .unwrap();
        assert_eq!(
            r.body,
            ClientRequest::Subscribe {
                user_agent: Some("bmminer/2.0.0".into()),
                session_id: Some("deadbeef".into())
            }
        );
        let r = Request::parse(br#"{"id":1,"method":"mining.subscribe","params":[]}"#).unwrap();
        assert_eq!(
            r.body,
            ClientRequest::Subscribe {
                user_agent: None,
                session_id: None
            }
        );
        let r =
            Request::parse(br#"{"id":2,"method":"mining.authorize","params":["acct.rig1",null]}"#)
                .unwrap();
        assert_eq!(
            r.body,
            ClientRequest::Authorize {
                username: "acct.rig1".into(),
                password: None
            }
        );
        let r = Request::parse(br#"{"id":3,"method":"mining.suggest_difficulty","params":[512]}"#)
            .unwrap();
        assert_eq!(
            r.body,
            ClientRequest::SuggestDifficulty(Difficulty::new(512.0).unwrap())
        );
        let r = Request::parse(
            br#"{"id":4,"method":"mining.configure","params":[["version-rolling","minimum-difficulty","subscribe-extranonce","x-unknown"],{"version-rolling.mask":"ffffffff","version-rolling.min-bit-count":2,"minimum-difficulty.value":2048}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.body,
            ClientRequest::Configure(Configure {
                version_rolling: Some(VersionRollingRequest {
                    mask: VersionMask(0xffff_ffff),
                    min_bit_count: 2
                }),
                minimum_difficulty: Some(Difficulty::new(2048.0).unwrap()),
                subscribe_extranonce: true,
                unknown: vec!["x-unknown".into()],
            })
        );
        let r = Request::parse(br#"{"id":5,"method":"mining.extranonce.subscribe","params":[]}"#)
            .unwrap();
        assert_eq!(r.body, ClientRequest::ExtranonceSubscribe);
        let r =
            Request::parse(br#"{"id":6,"method":"mining.get_transactions","params":[]}"#).unwrap();
        assert_eq!(
            r.body,
            ClientRequest::Unknown("mining.get_transactions".into())
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for line in [
            &b"not json"[..],
            b"{",
            b"{}",
            b"\xff\xfe",
            br#"{"id":1,"method":5}"#,
            br#"{"id":1,"method":"mining.authorize","params":[]}"#,
            br#"{"id":1,"method":"mining.suggest_difficulty","params":[-1]}"#,
            br#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":1}]}"#,
        ] {
            assert!(Request::parse(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn error_and_result_encodings_match_pool_format() {
        let mut out = vec![];
        encode_error(&RequestId::Number(4), &StratumError::duplicate(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":4,\"result\":null,\"error\":[22,\"Duplicate share\",null]}\n"
        );
        let mut out = vec![];
        encode_bool_result(&RequestId::Raw("\"x\"".into()), true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":\"x\",\"result\":true,\"error\":null}\n"
        );
        let parsed = ServerMessage::parse(
            b"{\"id\":4,\"result\":null,\"error\":[23,\"Low difficulty share\",null]}",
        )
        .unwrap();
        assert_eq!(
            parsed,
            ServerMessage::Response(Response {
                id: RequestId::Number(4),
                result: Value::Null,
                error: Some(StratumError::low_difficulty())
            })
        );
    }

    #[test]
    fn notify_round_trips() {
        let job = Job::new(
            JobId::new("bf"),
            PrevHash(Hash256([3; 32])),
            vec![1, 2, 3],
            vec![4, 5],
            vec![[9; 32], [8; 32]],
            0x2000_0000,
            CompactTarget(0x1d00ffff),
            0x5e9a0b0c,
            true,
        );
        let n = ServerNotification::Notify(job);
        let line = n.encode(&RequestId::Null);
        assert_eq!(
            ServerMessage::parse(line.trim_end().as_bytes()).unwrap(),
            ServerMessage::Notification {
                id: RequestId::Null,
                body: n
            }
        );
    }

    fn arb_extranonce() -> impl Strategy<Value = Extranonce> {
        proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|v| Extranonce::from_slice(&v).unwrap())
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._\\-\"\\\\ é]{1,24}"
    }

    fn arb_request() -> impl Strategy<Value = Request<'static>> {
        let id = prop_oneof![
            Just(RequestId::Null),
            any::<u32>().prop_map(|n| RequestId::Number(n as u64)),
            "[a-z0-9]{1,8}".prop_map(|s| RequestId::Raw(format!("\"{s}\"").into())),
        ];
        let body = prop_oneof![
            (
                arb_name(),
                arb_name(),
                arb_extranonce(),
                any::<u32>(),
                any::<u32>(),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(w, j, e, t, n, v)| ClientRequest::Submit(Submit {
                    worker: w.into(),
                    job_id: j.into(),
                    extranonce2: e,
                    ntime: t,
                    nonce: n,
                    version_bits: v
                })),
            (arb_name(), proptest::option::of(arb_name())).prop_map(|(u, s)| {
                ClientRequest::Subscribe {
                    user_agent: Some(u.into()),
                    session_id: s.map(Into::into),
                }
            }),
            (arb_name(), arb_name()).prop_map(|(u, p)| ClientRequest::Authorize {
                username: u.into(),
                password: Some(p.into())
            }),
            (1u32..1_000_000).prop_map(|d| ClientRequest::SuggestDifficulty(
                Difficulty::new(d as f64 / 8.0).unwrap()
            )),
            (
                any::<u32>(),
                0u32..16,
                any::<bool>(),
                proptest::option::of(1u32..100000)
            )
                .prop_map(|(m, b, x, d)| {
                    ClientRequest::Configure(Configure {
                        version_rolling: Some(VersionRollingRequest {
                            mask: VersionMask(m),
                            min_bit_count: b,
                        }),
                        minimum_difficulty: d.map(|d| Difficulty::new(d as f64).unwrap()),
                        subscribe_extranonce: x,
                        unknown: vec![],
                    })
                }),
            Just(ClientRequest::ExtranonceSubscribe),
        ];
        (id, body).prop_map(|(id, body)| Request { id, body })
    }

    proptest! {
        #[test]
        fn client_requests_round_trip(req in arb_request()) {
            let line = req.encode();
            let parsed = Request::parse(line.trim_end().as_bytes()).map_err(|f| TestCaseError::fail(f.error.to_string()))?;
            prop_assert_eq!(parsed, req);
        }

        #[test]
        fn server_notifications_round_trip(
            d in 1u32..1_000_000,
            e1 in arb_extranonce(),
            size in 0usize..16,
            mask in any::<u32>(),
            msg in arb_name(),
        ) {
            for n in [
                ServerNotification::SetDifficulty(Difficulty::new(d as f64 / 4.0).unwrap()),
                ServerNotification::SetExtranonce { extranonce1: e1, extranonce2_size: size },
                ServerNotification::SetVersionMask(VersionMask(mask)),
                ServerNotification::Reconnect { host: Some("127.0.0.1".into()), port: Some(3333), wait_secs: Some(5) },
                ServerNotification::ShowMessage(msg.clone()),
                ServerNotification::Ping,
            ] {
                let line = n.encode(&RequestId::Null);
                let parsed = ServerMessage::parse(line.trim_end().as_bytes()).unwrap();
                prop_assert_eq!(parsed, ServerMessage::Notification { id: RequestId::Null, body: n });
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::parse(&bytes);
            let _ = ServerMessage::parse(&bytes);
        }
    }
}
