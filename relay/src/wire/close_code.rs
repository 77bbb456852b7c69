//! Codes of the Error frames (and QUIC application close codes) a core sends an edge before it
//! closes the connection. Part of the wire protocol: the edge reads them to say why its link
//! went down.

/// `Hello.protocol_version` is not one this core speaks.
pub const UNSUPPORTED_VERSION: u16 = 1;
/// `Hello.edge_id` differs from the edge id in the client certificate.
pub const IDENTITY_MISMATCH: u16 = 2;
/// The edge is refused for a while after failing the audit twice.
pub const BANNED: u16 = 3;
/// The edge failed the audit a second time in this session; it is now banned.
pub const AUDIT_FAILED: u16 = 4;
/// No extranonce lease is free on this shard.
pub const NO_LEASE: u16 = 5;
/// A frame or stream the protocol does not allow (undecodable, seq 0, wrong frame type).
pub const PROTOCOL_VIOLATION: u16 = 6;
/// A newer connection of the same edge took over.
pub const REPLACED: u16 = 7;
/// The core could not make a batch durable; reconnect and replay.
pub const INTERNAL: u16 = 8;
/// The core is shutting down.
pub const SHUTDOWN: u16 = 9;

/// A short name for logs and metric labels.
pub fn name(code: u16) -> &'static str {
    match code {
        UNSUPPORTED_VERSION => "unsupported_version",
        IDENTITY_MISMATCH => "identity_mismatch",
        BANNED => "banned",
        AUDIT_FAILED => "audit_failed",
        NO_LEASE => "no_lease",
        PROTOCOL_VIOLATION => "protocol_violation",
        REPLACED => "replaced",
        INTERNAL => "internal",
        SHUTDOWN => "shutdown",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_code_has_its_own_name() {
        let names: std::collections::BTreeSet<_> = (0..=10).map(super::name).collect();
        // 9 codes, plus "unknown" for 0 and 10.
        assert_eq!(names.len(), 10);
        assert_eq!(super::name(super::SHUTDOWN), "shutdown");
        assert_eq!(super::name(42), "unknown");
    }
}
