//! Compares what miners were told with what the core credited: every share a miner heard
//! "accepted" for must be credited exactly once.

use std::collections::{HashMap, HashSet};

/// The outcome of a comparison.
#[derive(Debug, Default)]
pub struct CreditReport {
    pub accepted: usize,
    pub credited: usize,
    /// Accepted by the edge (as the miner heard) but not credited.
    pub missing: Vec<String>,
    /// Credited more than once.
    pub doubled: Vec<String>,
    /// Credited but never acknowledged to the miner (e.g. the edge died between spooling a
    /// share and answering): harmless, reported for information.
    pub credited_unacknowledged: usize,
}

impl CreditReport {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.doubled.is_empty()
    }
}

/// The identity of a credited share from one `quarry-core journal-dump` line, in the miners'
/// `worker/job/extranonce1/extranonce2/ntime/nonce` form.
pub fn credited_id(v: &serde_json::Value) -> Option<String> {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(format!(
        "{}/{}/{}/{}/{}/{}",
        s("worker")?,
        s("job_id")?,
        s("extranonce1")?,
        s("extranonce2")?,
        s("ntime")?,
        s("nonce")?
    ))
}

pub fn compare(accepted_ids: &[String], credited: &[serde_json::Value]) -> CreditReport {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for v in credited {
        if let Some(id) = credited_id(v) {
            *counts.entry(id).or_default() += 1;
        }
    }
    let accepted: HashSet<&String> = accepted_ids.iter().collect();
    CreditReport {
        accepted: accepted_ids.len(),
        credited: credited.len(),
        missing: accepted_ids
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .cloned()
            .collect(),
        doubled: counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("{id} x{n}"))
            .collect(),
        credited_unacknowledged: counts.keys().filter(|id| !accepted.contains(id)).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(nonce: &str) -> serde_json::Value {
        json!({"worker":"a.b","job_id":"1","extranonce1":"00010000","extranonce2":"00000001","ntime":"65000000","nonce":nonce})
    }

    #[test]
    fn finds_missing_and_doubled_credits() {
        let accepted = vec![
            "a.b/1/00010000/00000001/65000000/00000001".to_string(),
            "a.b/1/00010000/00000001/65000000/00000002".to_string(),
        ];
        let r = compare(
            &accepted,
            &[rec("00000001"), rec("00000001"), rec("00000003")],
        );
        assert_eq!(r.missing, vec![accepted[1].clone()]);
        assert_eq!(r.doubled.len(), 1);
        assert_eq!(r.credited_unacknowledged, 1);
        assert!(!r.is_exact());
        let r = compare(&accepted, &[rec("00000001"), rec("00000002")]);
        assert!(r.is_exact());
    }
}
