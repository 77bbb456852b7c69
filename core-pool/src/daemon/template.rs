//! Block templates, the coinbase around the extranonce, and full blocks for `submitblock`.
//!
//! `getblocktemplate` hands the pool every part of the next block except the coinbase and the
//! header's nonce. The pool writes the coinbase itself: it pays the pool's address, proves the
//! height (BIP34), carries the pool's tag, commits to the block's witnesses (BIP141) and leaves a
//! gap in its scriptSig for the *extranonce*, so that every miner hashes a different coinbase and
//! therefore a different merkle root. Stratum ships the coinbase as `coinb1` and `coinb2`, the
//! bytes before and after that gap.
//!
//! The Stratum coinbase is the non-witness serialization: its double SHA-256 is the txid, the
//! leaf the merkle root is built on. The block sent to the daemon carries the witness form (the
//! BIP141 witness reserved value of 32 zero bytes), and on Litecoin after MWEB activation the
//! extension block as well: the template's last transaction is then the HogEx (the
//! "hogwarts extension" transaction that moves coins in and out of the MWEB), and the block ends
//! with the serialized MWEB block from the template's `mweb` field.

use relay::work::header::coinbase_merkle_branch;
use relay::work::{CompactTarget, Job, JobId, PrevHash, Target, TargetError};
use relay::Hash256;
use serde::Deserialize;
use serde_json::Value;

/// The rules Litecoin's `getblocktemplate` insists on (it refuses a request without both).
pub const TEMPLATE_RULES: [&str; 2] = ["segwit", "mweb"];

/// Consensus limits on the coinbase scriptSig (`bad-cb-length`): 2 to 100 bytes.
pub const MAX_COINBASE_SCRIPT_SIG: usize = 100;

/// BIP141: the coinbase witness is one 32-byte item, the witness reserved value, all zero here.
const WITNESS_RESERVED_VALUE: [u8; 32] = [0; 32];

/// Litecoin MWEB: serialization flag bit marking a transaction with MWEB data (the HogEx).
const MWEB_TX_FLAG: u8 = 0x08;

/// A transaction of the template, already in block order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateTransaction {
    /// The transaction as it goes into the block (witness serialization where it has one).
    pub data: Vec<u8>,
    /// Leaf of the block's merkle tree.
    pub txid: Hash256,
    /// wtxid, leaf of the witness commitment's tree.
    pub hash: Hash256,
}

/// A parsed `getblocktemplate` answer: the fields a pool needs, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTemplate {
    pub height: u64,
    pub previous_block_hash: Hash256,
    pub version: u32,
    pub bits: CompactTarget,
    pub curtime: u32,
    pub mintime: u32,
    /// Subsidy plus fees, in the coin's smallest unit; all of it goes to the payout output.
    pub coinbase_value: u64,
    pub transactions: Vec<TemplateTransaction>,
    /// The complete scriptPubKey of the BIP141 commitment output (`6a24aa21a9ed…`).
    pub default_witness_commitment: Option<Vec<u8>>,
    /// The serialized MWEB extension block, present once MWEB is active.
    pub mweb: Option<Vec<u8>>,
    /// Identifies this template for BIP22 longpoll.
    pub longpoll_id: Option<String>,
}

/// A `getblocktemplate` answer that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("getblocktemplate: {0}")]
    Json(#[from] serde_json::Error),
    #[error("getblocktemplate: field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("getblocktemplate: transactions[{index}].{field}: {reason}")]
    Transaction {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

#[derive(Deserialize)]
struct RawTemplate {
    height: u64,
    previousblockhash: String,
    version: u32,
    bits: String,
    curtime: u64,
    #[serde(default)]
    mintime: Option<u64>,
    coinbasevalue: u64,
    transactions: Vec<RawTransaction>,
    #[serde(default)]
    default_witness_commitment: Option<String>,
    #[serde(default)]
    mweb: Option<String>,
    #[serde(default)]
    longpollid: Option<String>,
}

#[derive(Deserialize)]
struct RawTransaction {
    data: String,
    txid: String,
    #[serde(default)]
    hash: Option<String>,
}

impl BlockTemplate {
    /// The parameters of a `getblocktemplate` call, with BIP22 longpoll when an id is given.
    pub fn request_params(longpoll_id: Option<&str>) -> Vec<Value> {
        let mut req = serde_json::json!({ "rules": TEMPLATE_RULES });
        if let Some(id) = longpoll_id {
            req["longpollid"] = Value::String(id.to_string());
        }
        vec![req]
    }

    pub fn from_json(value: Value) -> Result<Self, TemplateError> {
        let raw: RawTemplate = serde_json::from_value(value)?;
        let field = |field: &'static str, reason: String| TemplateError::Field { field, reason };
        let previous_block_hash =
            Hash256::from_display_hex(&raw.previousblockhash).map_err(|e| {
                field(
                    "previousblockhash",
                    format!("'{}': {e}", raw.previousblockhash),
                )
            })?;
        let mut bits = [0u8; 4];
        hex::decode_to_slice(&raw.bits, &mut bits)
            .map_err(|e| field("bits", format!("'{}': {e}", raw.bits)))?;
        let bits = CompactTarget(u32::from_be_bytes(bits));
        Target::from_compact(bits).map_err(|e| field("bits", e.to_string()))?;
        let curtime = u32::try_from(raw.curtime)
            .map_err(|_| field("curtime", format!("{} does not fit 32 bits", raw.curtime)))?;
        let mintime = match raw.mintime {
            None => curtime,
            Some(t) => u32::try_from(t)
                .map_err(|_| field("mintime", format!("{t} does not fit 32 bits")))?,
        };
        let hex_opt = |name: &'static str, s: Option<String>| -> Result<_, TemplateError> {
            s.map(|s| hex::decode(&s).map_err(|e| field(name, e.to_string())))
                .transpose()
        };
        let default_witness_commitment =
            hex_opt("default_witness_commitment", raw.default_witness_commitment)?;
        let mweb = hex_opt("mweb", raw.mweb)?;
        let transactions = raw
            .transactions
            .into_iter()
            .enumerate()
            .map(|(index, t)| {
                let tx_err = |field: &'static str, reason: String| TemplateError::Transaction {
                    index,
                    field,
                    reason,
                };
                let data = hex::decode(&t.data).map_err(|e| tx_err("data", e.to_string()))?;
                let txid = Hash256::from_display_hex(&t.txid)
                    .map_err(|e| tx_err("txid", format!("'{}': {e}", t.txid)))?;
                let hash = match &t.hash {
                    Some(h) => Hash256::from_display_hex(h)
                        .map_err(|e| tx_err("hash", format!("'{h}': {e}")))?,
                    None => txid,
                };
                Ok(TemplateTransaction { data, txid, hash })
            })
            .collect::<Result<Vec<_>, TemplateError>>()?;
        Ok(BlockTemplate {
            height: raw.height,
            previous_block_hash,
            version: raw.version,
            bits,
            curtime,
            mintime,
            coinbase_value: raw.coinbasevalue,
            transactions,
            default_witness_commitment,
            mweb,
            longpoll_id: raw.longpollid,
        })
    }

    /// The network target the block's PoW hash must meet.
    pub fn network_target(&self) -> Result<Target, TargetError> {
        Target::from_compact(self.bits)
    }

    /// Txids of the template's transactions in block order (internal byte order).
    pub fn txids(&self) -> Vec<[u8; 32]> {
        self.transactions.iter().map(|t| t.txid.0).collect()
    }

    /// The Stratum merkle branch for a coinbase in front of the template's transactions.
    pub fn merkle_branch(&self) -> Vec<[u8; 32]> {
        coinbase_merkle_branch(&self.txids())
    }

    /// True when MWEB is active for this block: the template carries the extension block and
    /// its last transaction is the HogEx (marked by the MWEB serialization flag).
    pub fn has_hogex(&self) -> bool {
        self.mweb.is_some()
            && self.transactions.last().is_some_and(|t| {
                t.data.len() > 5 && t.data[4] == 0 && t.data[5] & MWEB_TX_FLAG != 0
            })
    }
}

/// What the pool puts in every coinbase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoinbaseConfig {
    /// scriptPubKey of the pool's payout address (ask the daemon: `validateaddress`).
    pub payout_script: Vec<u8>,
    /// Pushed after the extranonce so block explorers can attribute blocks to the pool.
    pub pool_tag: Vec<u8>,
    /// Bytes between coinb1 and coinb2: `ExtranonceLayout::total_len()`.
    pub extranonce_len: usize,
}

/// The coinbase split around the extranonce gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoinbaseParts {
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoinbaseError {
    #[error(
        "coinbase scriptSig would be {len} bytes (height {height_len} + extranonce {extranonce_len} + pool tag {tag_len} with push opcodes), consensus allows at most {MAX_COINBASE_SCRIPT_SIG}; shorten the pool tag"
    )]
    ScriptSigTooLong {
        len: usize,
        height_len: usize,
        extranonce_len: usize,
        tag_len: usize,
    },
    #[error("extranonce length {0} is outside 1..=75 (one direct push)")]
    BadExtranonceLength(usize),
    #[error("payout scriptPubKey is empty: the address cannot receive a coinbase output (MWEB addresses cannot)")]
    EmptyPayoutScript,
    #[error("template bits: {0}")]
    Bits(#[from] TargetError),
}

/// `CScript() << height` as Bitcoin Core writes it, which BIP34 requires the scriptSig to start
/// with: OP_0 / OP_1..OP_16 for small heights, else a minimal little-endian number push.
pub fn bip34_height_script(height: u64) -> Vec<u8> {
    match height {
        0 => vec![0x00],
        1..=16 => vec![0x50 + height as u8],
        _ => {
            let mut n = Vec::new();
            let mut v = height;
            while v > 0 {
                n.push((v & 0xff) as u8);
                v >>= 8;
            }
            // CScriptNum is sign-magnitude: a set top bit would read as negative.
            if n.last().is_some_and(|b| b & 0x80 != 0) {
                n.push(0);
            }
            let mut out = Vec::with_capacity(n.len() + 1);
            out.push(n.len() as u8);
            out.extend_from_slice(&n);
            out
        }
    }
}

/// A push of `data` (at most 255 bytes, enough for anything a scriptSig of 100 can hold).
fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    if data.len() <= 75 {
        out.push(data.len() as u8);
    } else {
        out.push(0x4c); // OP_PUSHDATA1
        out.push(data.len() as u8);
    }
    out.extend_from_slice(data);
}

/// Bitcoin's CompactSize length prefix.
pub fn write_compact_size(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Builds the coinbase (non-witness serialization) around the extranonce gap:
///
/// ```text
/// coinb1 = version ‖ 1 input ‖ null prevout ‖ scriptSig length ‖ height push ‖ extranonce push opcode
/// coinb2 = pool tag push ‖ sequence ‖ outputs (payout, witness commitment) ‖ locktime
/// ```
pub fn build_coinbase(
    template: &BlockTemplate,
    config: &CoinbaseConfig,
) -> Result<CoinbaseParts, CoinbaseError> {
    if !(1..=75).contains(&config.extranonce_len) {
        return Err(CoinbaseError::BadExtranonceLength(config.extranonce_len));
    }
    if config.payout_script.is_empty() {
        return Err(CoinbaseError::EmptyPayoutScript);
    }
    let height = bip34_height_script(template.height);
    let mut tag = Vec::new();
    if !config.pool_tag.is_empty() {
        push_data(&mut tag, &config.pool_tag);
    }
    let script_sig_len = height.len() + 1 + config.extranonce_len + tag.len();
    if script_sig_len > MAX_COINBASE_SCRIPT_SIG {
        return Err(CoinbaseError::ScriptSigTooLong {
            len: script_sig_len,
            height_len: height.len(),
            extranonce_len: config.extranonce_len,
            tag_len: config.pool_tag.len(),
        });
    }

    let mut coinb1 = Vec::with_capacity(64);
    coinb1.extend_from_slice(&2u32.to_le_bytes()); // tx version
    coinb1.push(1); // one input
    coinb1.extend_from_slice(&[0u8; 32]); // null prevout: hash ...
    coinb1.extend_from_slice(&u32::MAX.to_le_bytes()); // ... and index 0xffffffff
    write_compact_size(&mut coinb1, script_sig_len as u64);
    coinb1.extend_from_slice(&height);
    coinb1.push(config.extranonce_len as u8); // push opcode of the extranonce

    let mut coinb2 = Vec::with_capacity(128);
    coinb2.extend_from_slice(&tag);
    coinb2.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
    let outputs = 1 + usize::from(template.default_witness_commitment.is_some());
    write_compact_size(&mut coinb2, outputs as u64);
    coinb2.extend_from_slice(&template.coinbase_value.to_le_bytes());
    write_compact_size(&mut coinb2, config.payout_script.len() as u64);
    coinb2.extend_from_slice(&config.payout_script);
    if let Some(commitment) = &template.default_witness_commitment {
        coinb2.extend_from_slice(&0u64.to_le_bytes());
        write_compact_size(&mut coinb2, commitment.len() as u64);
        coinb2.extend_from_slice(commitment);
    }
    coinb2.extend_from_slice(&0u32.to_le_bytes()); // locktime
    Ok(CoinbaseParts { coinb1, coinb2 })
}

/// The Stratum job for a template: its coinbase split, merkle branch and header fields.
pub fn build_job(
    template: &BlockTemplate,
    config: &CoinbaseConfig,
    id: JobId,
    clean_jobs: bool,
) -> Result<Job, CoinbaseError> {
    template.network_target()?;
    let parts = build_coinbase(template, config)?;
    Ok(Job::new(
        id,
        PrevHash(template.previous_block_hash),
        parts.coinb1,
        parts.coinb2,
        template.merkle_branch(),
        template.version,
        template.bits,
        template.curtime,
        clean_jobs,
    ))
}

/// A coinbase that cannot go into a block, naming the byte offset where it went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockAssemblyError {
    #[error("coinbase: {what} at byte {offset} of {len}")]
    MalformedCoinbase {
        what: &'static str,
        offset: usize,
        len: usize,
    },
}

/// Checks that `cb` is one whole non-witness coinbase transaction: one input with a null
/// prevout, outputs, and nothing after the locktime. Returns nothing; the point is the error.
fn check_coinbase_shape(cb: &[u8]) -> Result<(), BlockAssemblyError> {
    let mut pos = 0usize;
    let bad = |what, offset| BlockAssemblyError::MalformedCoinbase {
        what,
        offset,
        len: cb.len(),
    };
    let take = |pos: &mut usize, n: usize, what| -> Result<usize, BlockAssemblyError> {
        let at = *pos;
        if cb.len().saturating_sub(at) < n {
            return Err(bad(what, at));
        }
        *pos += n;
        Ok(at)
    };
    let compact = |pos: &mut usize, what| -> Result<u64, BlockAssemblyError> {
        let at = take(pos, 1, what)?;
        Ok(match cb[at] {
            0xfd => {
                let i = take(pos, 2, what)?;
                u64::from(u16::from_le_bytes([cb[i], cb[i + 1]]))
            }
            0xfe => {
                let i = take(pos, 4, what)?;
                u64::from(u32::from_le_bytes([cb[i], cb[i + 1], cb[i + 2], cb[i + 3]]))
            }
            0xff => {
                let i = take(pos, 8, what)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&cb[i..i + 8]);
                u64::from_le_bytes(b)
            }
            n => u64::from(n),
        })
    };
    take(&mut pos, 4, "truncated version")?;
    let inputs_at = pos;
    match compact(&mut pos, "truncated input count")? {
        1 => {}
        0 => {
            return Err(bad(
                "witness marker or no input (expected the non-witness form)",
                inputs_at,
            ))
        }
        _ => return Err(bad("more than one input", inputs_at)),
    }
    let prevout = take(&mut pos, 36, "truncated prevout")?;
    if cb[prevout..prevout + 32] != [0u8; 32] || cb[prevout + 32..prevout + 36] != [0xff; 4] {
        return Err(bad("prevout is not null", prevout));
    }
    let script_at = pos;
    let script_len = compact(&mut pos, "truncated scriptSig length")?;
    if !(2..=MAX_COINBASE_SCRIPT_SIG as u64).contains(&script_len) {
        return Err(bad("scriptSig length outside 2..=100", script_at));
    }
    take(&mut pos, script_len as usize, "truncated scriptSig")?;
    take(&mut pos, 4, "truncated sequence")?;
    let outputs = compact(&mut pos, "truncated output count")?;
    if outputs == 0 {
        return Err(bad("no outputs", pos - 1));
    }
    for _ in 0..outputs {
        take(&mut pos, 8, "truncated output value")?;
        let n = compact(&mut pos, "truncated output script length")?;
        take(&mut pos, n as usize, "truncated output script")?;
    }
    take(&mut pos, 4, "truncated locktime")?;
    if pos != cb.len() {
        return Err(bad("trailing bytes after locktime", pos));
    }
    Ok(())
}

/// The full serialized block for `submitblock`:
///
/// ```text
/// header ‖ tx count ‖ coinbase (witness form when the template commits to witnesses)
///        ‖ template transactions ‖ [0x01 ‖ MWEB block, when the template has one]
/// ```
///
/// `coinbase` is the non-witness serialization the miner's extranonces produced
/// (`Job::coinbase`); the witness form inserts marker 0x00, flag 0x01 and the witness reserved
/// value, which leaves the txid (and so the header's merkle root) unchanged. Litecoin rejects a
/// block without the MWEB block its HogEx commits to (`bad-witness-merkle-match`).
pub fn assemble_block(
    template: &BlockTemplate,
    coinbase: &[u8],
    header: &[u8; 80],
) -> Result<Vec<u8>, BlockAssemblyError> {
    check_coinbase_shape(coinbase)?;
    let tx_bytes: usize = template.transactions.iter().map(|t| t.data.len()).sum();
    let mweb_len = template.mweb.as_ref().map_or(0, |m| m.len() + 1);
    let mut block = Vec::with_capacity(80 + 9 + coinbase.len() + 36 + tx_bytes + mweb_len);
    block.extend_from_slice(header);
    write_compact_size(&mut block, 1 + template.transactions.len() as u64);
    if template.default_witness_commitment.is_some() {
        let (version, rest) = coinbase.split_at(4);
        let (body, locktime) = rest.split_at(rest.len() - 4);
        block.extend_from_slice(version);
        block.extend_from_slice(&[0x00, 0x01]); // BIP144 marker and flag
        block.extend_from_slice(body);
        block.push(1); // one witness stack item for the one input ...
        block.push(WITNESS_RESERVED_VALUE.len() as u8);
        block.extend_from_slice(&WITNESS_RESERVED_VALUE); // ... the witness reserved value
        block.extend_from_slice(locktime);
    } else {
        block.extend_from_slice(coinbase);
    }
    for tx in &template.transactions {
        block.extend_from_slice(&tx.data);
    }
    if let Some(mweb) = &template.mweb {
        block.push(0x01); // Litecoin OptionalPtr: the MWEB block is present
        block.extend_from_slice(mweb);
    }
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::sha256d;
    use relay::work::header::{merkle_root, merkle_root_of};
    use relay::work::Extranonce;

    const FIXTURE: &str = include_str!("../../testdata/gbt_regtest_mweb.json");

    fn mweb_template() -> BlockTemplate {
        BlockTemplate::from_json(serde_json::from_str(FIXTURE).expect("fixture json"))
            .expect("template")
    }

    /// The same template as if MWEB were not active yet: no extension block, no HogEx.
    fn pre_mweb_template() -> BlockTemplate {
        let mut v: Value = serde_json::from_str(FIXTURE).expect("fixture json");
        let obj = v.as_object_mut().expect("object");
        obj.remove("mweb");
        obj["transactions"].as_array_mut().expect("array").pop();
        BlockTemplate::from_json(v).expect("template")
    }

    fn config() -> CoinbaseConfig {
        CoinbaseConfig {
            // P2WPKH of the fixture's regtest wallet.
            payout_script: hex::decode("0014599f2c5f468825d65ac3e3293077f647e6148403")
                .expect("hex"),
            pool_tag: b"/quarry-test/".to_vec(),
            extranonce_len: 8,
        }
    }

    /// A transaction as the test parser reads it back.
    #[derive(Debug)]
    struct ParsedTx {
        version: u32,
        inputs: Vec<([u8; 36], Vec<u8>, u32)>,
        outputs: Vec<(u64, Vec<u8>)>,
        witnesses: Vec<Vec<Vec<u8>>>,
        locktime: u32,
    }

    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let s = &self.b[self.pos..self.pos + n];
            self.pos += n;
            s
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.take(4).try_into().expect("4"))
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.take(8).try_into().expect("8"))
        }
        fn compact(&mut self) -> u64 {
            match self.take(1)[0] {
                0xfd => u16::from_le_bytes(self.take(2).try_into().expect("2")).into(),
                0xfe => self.u32().into(),
                0xff => self.u64(),
                n => n.into(),
            }
        }
        fn bytes(&mut self) -> Vec<u8> {
            let n = self.compact() as usize;
            self.take(n).to_vec()
        }
        fn tx(&mut self) -> ParsedTx {
            let version = self.u32();
            let mut segwit = false;
            if self.b[self.pos] == 0 {
                assert_eq!(
                    self.take(2),
                    [0, 1],
                    "only the BIP144 witness flag is expected"
                );
                segwit = true;
            }
            let inputs = (0..self.compact())
                .map(|_| {
                    let prevout: [u8; 36] = self.take(36).try_into().expect("36");
                    let script = self.bytes();
                    (prevout, script, self.u32())
                })
                .collect::<Vec<_>>();
            let outputs = (0..self.compact())
                .map(|_| (self.u64(), self.bytes()))
                .collect();
            let witnesses = if segwit {
                (0..inputs.len())
                    .map(|_| (0..self.compact()).map(|_| self.bytes()).collect())
                    .collect()
            } else {
                vec![]
            };
            let locktime = self.u32();
            ParsedTx {
                version,
                inputs,
                outputs,
                witnesses,
                locktime,
            }
        }
    }

    fn parse_tx(b: &[u8]) -> ParsedTx {
        let mut r = Reader { b, pos: 0 };
        let tx = r.tx();
        assert_eq!(r.pos, b.len(), "trailing bytes after the transaction");
        tx
    }

    #[test]
    fn fixture_template_parses_with_mweb_and_hogex() {
        let t = mweb_template();
        assert_eq!(t.height, 437);
        assert_eq!(t.bits, CompactTarget(0x207fffff));
        assert_eq!(t.coinbase_value, 1_250_001_410);
        assert_eq!(t.transactions.len(), 2);
        assert!(t.has_hogex());
        assert!(t.mweb.is_some());
        assert!(t.longpoll_id.is_some());
        assert!(!pre_mweb_template().has_hogex());
    }

    #[test]
    fn bad_template_fields_are_named() {
        let mut v: Value = serde_json::from_str(FIXTURE).expect("json");
        v["bits"] = Value::String("zz".into());
        let err = BlockTemplate::from_json(v).expect_err("bad bits");
        assert!(err.to_string().contains("field bits"), "{err}");

        let mut v: Value = serde_json::from_str(FIXTURE).expect("json");
        v["transactions"][1]["txid"] = Value::String("abc".into());
        let err = BlockTemplate::from_json(v).expect_err("bad txid");
        assert!(err.to_string().contains("transactions[1].txid"), "{err}");

        let mut v: Value = serde_json::from_str(FIXTURE).expect("json");
        v.as_object_mut().expect("obj").remove("height");
        let err = BlockTemplate::from_json(v).expect_err("no height");
        assert!(err.to_string().contains("height"), "{err}");
    }

    #[test]
    fn bip34_height_matches_cscript_encoding() {
        // Bitcoin Core `CScript() << n`.
        assert_eq!(bip34_height_script(0), [0x00]);
        assert_eq!(bip34_height_script(1), [0x51]);
        assert_eq!(bip34_height_script(16), [0x60]);
        assert_eq!(bip34_height_script(17), [0x01, 0x11]);
        assert_eq!(bip34_height_script(127), [0x01, 0x7f]);
        assert_eq!(bip34_height_script(128), [0x02, 0x80, 0x00]);
        assert_eq!(bip34_height_script(437), [0x02, 0xb5, 0x01]);
        // Litecoin mainnet height 2,500,000 = 0x2625a0.
        assert_eq!(bip34_height_script(2_500_000), [0x03, 0xa0, 0x25, 0x26]);
        assert_eq!(
            bip34_height_script(0x80_0000),
            [0x04, 0x00, 0x00, 0x80, 0x00]
        );
    }

    #[test]
    fn coinbase_parses_back_with_extranonce_inside_the_script_sig() {
        let t = mweb_template();
        let cfg = config();
        let job = build_job(&t, &cfg, JobId::from_counter(1), true).expect("job");
        let e1 = Extranonce::from_hex("01020304").expect("e1");
        let e2 = Extranonce::from_hex("a1a2a3a4").expect("e2");
        let cb = job.coinbase(&e1, &e2);
        let tx = parse_tx(&cb);
        assert_eq!(tx.version, 2);
        assert_eq!(tx.inputs.len(), 1);
        let (prevout, script_sig, sequence) = &tx.inputs[0];
        assert_eq!(prevout[..32], [0u8; 32]);
        assert_eq!(prevout[32..], [0xff; 4]);
        assert_eq!(*sequence, u32::MAX);
        let mut expected = bip34_height_script(437);
        expected.push(8);
        expected.extend_from_slice(&[1, 2, 3, 4, 0xa1, 0xa2, 0xa3, 0xa4]);
        expected.push(13);
        expected.extend_from_slice(b"/quarry-test/");
        assert_eq!(script_sig, &expected);
        assert_eq!(tx.outputs.len(), 2);
        assert_eq!(tx.outputs[0], (t.coinbase_value, cfg.payout_script.clone()));
        assert_eq!(
            tx.outputs[1],
            (0, t.default_witness_commitment.clone().expect("commitment"))
        );
        assert!(tx.witnesses.is_empty());
        assert_eq!(tx.locktime, 0);
        assert_eq!(job.coinbase_hash(&e1, &e2), sha256d(&cb));
    }

    #[test]
    fn job_merkle_root_equals_full_tree_over_coinbase_and_template() {
        let t = mweb_template();
        let job = build_job(&t, &config(), JobId::from_counter(1), true).expect("job");
        let e1 = Extranonce::from_hex("00000001").expect("e1");
        let e2 = Extranonce::from_hex("00000002").expect("e2");
        let cb = job.coinbase_hash(&e1, &e2);
        let mut leaves = vec![cb];
        leaves.extend(t.txids());
        assert_eq!(merkle_root(cb, &job.merkle_branch), merkle_root_of(&leaves));
    }

    #[test]
    fn template_witness_commitment_covers_coinbase_zero_and_template_wtxids() {
        // BIP141: commitment = sha256d(witness root ‖ reserved value), coinbase wtxid = 0.
        // Checks our reading of the template (including the HogEx) against the daemon's own.
        let t = mweb_template();
        let mut leaves = vec![[0u8; 32]];
        leaves.extend(t.transactions.iter().map(|tx| tx.hash.0));
        let mut pre = merkle_root_of(&leaves).to_vec();
        pre.extend_from_slice(&WITNESS_RESERVED_VALUE);
        let mut script = hex::decode("6a24aa21a9ed").expect("hex");
        script.extend_from_slice(&sha256d(&pre));
        assert_eq!(Some(script), t.default_witness_commitment);
    }

    #[test]
    fn assembled_block_has_witness_coinbase_template_txs_and_mweb() {
        let t = mweb_template();
        let job = build_job(&t, &config(), JobId::from_counter(1), true).expect("job");
        let e1 = Extranonce::from_hex("01020304").expect("e1");
        let e2 = Extranonce::from_hex("05060708").expect("e2");
        let cb = job.coinbase(&e1, &e2);
        let header = [0x5au8; 80];
        let block = assemble_block(&t, &cb, &header).expect("block");

        let mut r = Reader { b: &block, pos: 0 };
        assert_eq!(r.take(80), header);
        assert_eq!(r.compact(), 3);
        let start = r.pos;
        let coinbase = r.tx();
        assert_eq!(coinbase.witnesses, vec![vec![vec![0u8; 32]]]);
        assert_eq!(coinbase.outputs, parse_tx(&cb).outputs);
        // Stripping the witness gives back exactly what the miner hashed.
        let wit = &block[start..r.pos];
        let mut stripped = wit[..4].to_vec();
        stripped.extend_from_slice(&wit[6..wit.len() - 4 - 34]);
        stripped.extend_from_slice(&wit[wit.len() - 4..]);
        assert_eq!(stripped, cb);
        for tx in &t.transactions {
            assert_eq!(r.take(tx.data.len()), tx.data.as_slice());
        }
        assert_eq!(r.take(1), [0x01]);
        let mweb = t.mweb.as_ref().expect("mweb");
        assert_eq!(r.take(mweb.len()), mweb.as_slice());
        assert_eq!(r.pos, block.len());
    }

    #[test]
    fn pre_mweb_block_has_no_extension() {
        let t = pre_mweb_template();
        let job = build_job(&t, &config(), JobId::from_counter(1), true).expect("job");
        let e = Extranonce::from_hex("00000000").expect("e");
        let cb = job.coinbase(&e, &e);
        let block = assemble_block(&t, &cb, &[0; 80]).expect("block");
        let last_tx = &t.transactions[0].data;
        assert!(block.ends_with(last_tx));
    }

    #[test]
    fn malformed_coinbases_are_refused_with_the_offset() {
        let t = mweb_template();
        let job = build_job(&t, &config(), JobId::from_counter(1), true).expect("job");
        let e = Extranonce::from_hex("00000000").expect("e");
        let cb = job.coinbase(&e, &e);
        let err = assemble_block(&t, &cb[..cb.len() - 1], &[0; 80]).expect_err("short");
        assert!(err.to_string().contains("truncated locktime"), "{err}");
        let mut long = cb.clone();
        long.push(0);
        let err = assemble_block(&t, &long, &[0; 80]).expect_err("long");
        assert!(err.to_string().contains("trailing bytes"), "{err}");
        let mut witness = cb[..4].to_vec();
        witness.extend_from_slice(&[0, 1]);
        witness.extend_from_slice(&cb[4..]);
        let err = assemble_block(&t, &witness, &[0; 80]).expect_err("witness form");
        assert!(err.to_string().contains("non-witness"), "{err}");
    }

    #[test]
    fn oversized_pool_tag_is_refused_naming_the_limit() {
        let mut cfg = config();
        cfg.pool_tag = vec![b'x'; 90];
        let err = build_coinbase(&mweb_template(), &cfg).expect_err("too long");
        assert!(err.to_string().contains("at most 100"), "{err}");
    }

    #[test]
    fn request_params_carry_both_rules_and_longpoll_id() {
        let p = BlockTemplate::request_params(Some("abc"));
        assert_eq!(p[0]["rules"], serde_json::json!(["segwit", "mweb"]));
        assert_eq!(p[0]["longpollid"], "abc");
        assert!(BlockTemplate::request_params(None)[0]
            .get("longpollid")
            .is_none());
    }
}
