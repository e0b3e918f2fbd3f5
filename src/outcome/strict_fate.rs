//! What a connection on a PERMISSIVE or DISABLE port would have met under STRICT
//! (docs/strict-audit.md): pure, from the record alone, so the metric, the audit table and the
//! docs cannot disagree.

use serde::{Deserialize, Serialize};

use crate::outcome::record::Record;
use crate::outcome::{Opening, Reason};
use crate::policy::MtlsMode;

/// Would the connection have got through a STRICT port?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrictVerdict {
    /// A verified mesh mTLS peer.
    Pass,
    /// Plaintext, nothing before the sniff timeout, a broken ClientHello, or a mesh handshake
    /// that failed.
    Refuse,
    /// TLS passed through untouched: it passes only if the client would present a mesh
    /// certificate, which nobody asked it for.
    Unknown,
}

impl StrictVerdict {
    pub const ALL: [StrictVerdict; 3] = [StrictVerdict::Pass, StrictVerdict::Refuse, StrictVerdict::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            StrictVerdict::Pass => "pass",
            StrictVerdict::Refuse => "refuse",
            StrictVerdict::Unknown => "unknown",
        }
    }
}

/// What the client sent, in the words an operator fixes it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// TLS with a mesh ALPN, terminated here.
    Mtls,
    /// TLS that peerguard did not terminate: the app's own TLS, or any TLS on a DISABLE port.
    Tls,
    Plaintext,
    /// The client waited for the server to speak first.
    ServerFirst,
    /// A TLS record that did not become a usable ClientHello.
    MalformedTls,
}

impl AuditKind {
    pub const ALL: [AuditKind; 5] = [
        AuditKind::Mtls,
        AuditKind::Tls,
        AuditKind::Plaintext,
        AuditKind::ServerFirst,
        AuditKind::MalformedTls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Mtls => "mtls",
            AuditKind::Tls => "tls",
            AuditKind::Plaintext => "plaintext",
            AuditKind::ServerFirst => "server_first",
            AuditKind::MalformedTls => "malformed_tls",
        }
    }
}

/// A connection's would-be fate under STRICT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictFate {
    pub verdict: StrictVerdict,
    pub kind: AuditKind,
}

impl Record {
    /// The would-be fate under STRICT of a connection on a PERMISSIVE or DISABLE port; `None`
    /// on STRICT ports (nothing to foresee), before a mode applied, and when nothing crossed
    /// (a client that closed at once meets the same nothing under any mode).
    pub fn strict_fate(&self) -> Option<StrictFate> {
        if !matches!(self.mode, Some(MtlsMode::Permissive | MtlsMode::Disable)) {
            return None;
        }
        let (verdict, kind) = match self.opening {
            Opening::Unseen => return None,
            Opening::ServerFirst => (StrictVerdict::Refuse, AuditKind::ServerFirst),
            Opening::Plaintext => (StrictVerdict::Refuse, AuditKind::Plaintext),
            Opening::BrokenTls => (StrictVerdict::Refuse, AuditKind::MalformedTls),
            Opening::Tls if self.tls.as_ref().is_some_and(|tls| tls.peer.is_some()) => {
                (StrictVerdict::Pass, AuditKind::Mtls)
            }
            Opening::Tls if is_failed_mesh_handshake(self.reason) => (StrictVerdict::Refuse, AuditKind::Mtls),
            Opening::Tls => (StrictVerdict::Unknown, AuditKind::Tls),
        };
        Some(StrictFate { verdict, kind })
    }
}

/// A handshake peerguard ran (the client offered a mesh ALPN) that did not verify a peer.
fn is_failed_mesh_handshake(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::HandshakeFailed
            | Reason::HandshakeTimeout
            | Reason::ClientCertMissing
            | Reason::ClientCertUntrusted
            | Reason::ClientCertBadSignature
            | Reason::ClientCertNoSpiffeId
            | Reason::ClientCertWrongTrustDomain
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outcome::record::{Ended, TlsRecord};
    use crate::outcome::{Action, End, Transferred};
    use crate::tls::identity::SpiffeId;

    fn record(mode: MtlsMode, action: Action, reason: Reason, opening: Opening, tls: Option<TlsRecord>) -> Record {
        let ended = Ended {
            action,
            reason,
            opening,
            sniff_time: None,
            tls: tls.map(Box::new),
            transfer: Some(Transferred {
                to_app: 1,
                to_client: 1,
                end: End::Completed,
                opening,
            }),
            authorization: None,
        };
        Record::new(
            "127.0.0.2:40000".parse().unwrap(),
            8080,
            Some((mode, "demo/default".into())),
            ended,
            Duration::ZERO,
        )
    }

    fn fate(record: &Record) -> Option<(&'static str, &'static str)> {
        record.strict_fate().map(|f| (f.verdict.as_str(), f.kind.as_str()))
    }

    fn verified_peer() -> TlsRecord {
        TlsRecord {
            peer: Some(SpiffeId::new("cluster.local", "demo", "client").unwrap()),
            ..TlsRecord::default()
        }
    }

    #[test]
    fn permissive_connections_are_judged_by_what_the_client_sent() {
        use MtlsMode::Permissive;
        let cases = [
            (
                record(
                    Permissive,
                    Action::Terminate,
                    Reason::Mtls,
                    Opening::Tls,
                    Some(verified_peer()),
                ),
                ("pass", "mtls"),
            ),
            (
                // Denied by an AuthorizationPolicy after a verified handshake: peer
                // authentication passed; authorization is the same under any mode.
                record(
                    Permissive,
                    Action::Refuse,
                    Reason::DeniedByPolicy,
                    Opening::Tls,
                    Some(verified_peer()),
                ),
                ("pass", "mtls"),
            ),
            (
                record(
                    Permissive,
                    Action::Refuse,
                    Reason::ClientCertMissing,
                    Opening::Tls,
                    Some(TlsRecord::default()),
                ),
                ("refuse", "mtls"),
            ),
            (
                record(
                    Permissive,
                    Action::Passthrough,
                    Reason::PassthroughTls,
                    Opening::Tls,
                    Some(TlsRecord::default()),
                ),
                ("unknown", "tls"),
            ),
            (
                record(
                    Permissive,
                    Action::Passthrough,
                    Reason::PassthroughPlaintext,
                    Opening::Plaintext,
                    None,
                ),
                ("refuse", "plaintext"),
            ),
            (
                record(
                    Permissive,
                    Action::Passthrough,
                    Reason::PassthroughServerFirst,
                    Opening::ServerFirst,
                    None,
                ),
                ("refuse", "server_first"),
            ),
            (
                record(
                    Permissive,
                    Action::Passthrough,
                    Reason::ClientHelloMalformed,
                    Opening::BrokenTls,
                    None,
                ),
                ("refuse", "malformed_tls"),
            ),
            (
                record(
                    Permissive,
                    Action::Refuse,
                    Reason::ClientHelloTooLarge,
                    Opening::BrokenTls,
                    None,
                ),
                ("refuse", "malformed_tls"),
            ),
        ];
        for (record, expected) in cases {
            assert_eq!(fate(&record), Some(expected), "{:?}", record.reason);
        }
    }

    #[test]
    fn disable_connections_are_judged_by_what_the_copy_loop_saw() {
        use MtlsMode::Disable;
        let tls = record(
            Disable,
            Action::Passthrough,
            Reason::PassthroughDisabled,
            Opening::Tls,
            None,
        );
        assert_eq!(fate(&tls), Some(("unknown", "tls")));
        let plaintext = record(
            Disable,
            Action::Passthrough,
            Reason::PassthroughDisabled,
            Opening::Plaintext,
            None,
        );
        assert_eq!(fate(&plaintext), Some(("refuse", "plaintext")));
        let server_first = record(
            Disable,
            Action::Passthrough,
            Reason::PassthroughDisabled,
            Opening::ServerFirst,
            None,
        );
        assert_eq!(fate(&server_first), Some(("refuse", "server_first")));
    }

    #[test]
    fn strict_ports_and_connections_that_carried_nothing_are_not_audited() {
        let strict = record(
            MtlsMode::Strict,
            Action::Refuse,
            Reason::PlaintextOnStrict,
            Opening::Plaintext,
            None,
        );
        assert_eq!(fate(&strict), None);
        let closed = record(
            MtlsMode::Permissive,
            Action::Refuse,
            Reason::ClientClosedEarly,
            Opening::Unseen,
            None,
        );
        assert_eq!(fate(&closed), None);
        let own_port = Record::new(
            "127.0.0.2:40000".parse().unwrap(),
            15000,
            None,
            Ended::refused(Reason::OwnPort),
            Duration::ZERO,
        );
        assert_eq!(fate(&own_port), None);
    }

    #[test]
    fn labels_are_unique_and_match_serde() {
        for verdict in StrictVerdict::ALL {
            assert_eq!(serde_json::to_value(verdict).unwrap(), verdict.as_str());
        }
        let mut seen = std::collections::HashSet::new();
        for kind in AuditKind::ALL {
            assert!(seen.insert(kind.as_str()));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
