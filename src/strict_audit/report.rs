//! The `/strict_audit` document (docs/strict-audit.md): what the admin endpoint serves and
//! `peerguard audit` reads back.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::outcome::strict_fate::{AuditKind, StrictVerdict};
use crate::policy::MtlsMode;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// When the audit began: the process's start.
    pub since_unix: u64,
    pub max_sources_per_port: usize,
    pub max_ports: usize,
    /// Audited connections on ports past `max_ports`: counted in the metric, not tabled.
    pub untracked_connections: u64,
    /// Every PERMISSIVE or DISABLE port that has had a connection, by port number.
    pub ports: Vec<PortReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    pub port: u16,
    /// The port's mode in force now (a port already moved to STRICT keeps its history).
    pub mode: MtlsMode,
    /// Connections audited, and how many STRICT would pass, refuse, or might pass.
    pub connections: u64,
    pub pass: u64,
    pub refuse: u64,
    pub unknown: u64,
    /// Sources dropped from the full table to make room for newer ones.
    pub evicted_sources: u64,
    /// The sources that would not pass, those to fix first first.
    pub sources: Vec<SourceReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    pub address: IpAddr,
    pub kind: AuditKind,
    pub verdict: StrictVerdict,
    /// The last SNI and ALPN list the source sent (TLS only), escaped as in the access log.
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub connections: u64,
    pub first_seen_unix: u64,
    pub last_seen_unix: u64,
}
