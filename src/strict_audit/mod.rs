//! The STRICT audit (docs/strict-audit.md): on PERMISSIVE and DISABLE ports, what each
//! connection would have met under STRICT, kept per port as counts and a bounded table of the
//! sources that would not pass. A recorder fed by the connection's record after it ends; the
//! data path's stages know nothing of it, and nothing about the connection changes.
//! - `table`: one port's bounded source table.
//! - `report`: the `/strict_audit` document.

pub mod report;
mod table;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

use crate::outcome::record::Record;
use crate::outcome::strict_fate::StrictVerdict;
use crate::policy::MtlsMode;
use crate::tls::identity::unix_seconds;
use report::{AuditReport, PortReport};
use table::SourceTable;
pub use table::MAX_SOURCES_PER_PORT;

/// Most ports with a table of their own. In transparent mode iptables may redirect any port,
/// and a port scan must not mint a table per port: connections on further ports are counted
/// (`untracked_connections`, and the metric) but not tabled.
pub const MAX_PORTS: usize = 128;

pub struct StrictAudit {
    since: SystemTime,
    state: Mutex<State>,
    /// `peerguard_strict_audit_evicted_sources_total`.
    evictions: Counter,
}

#[derive(Default)]
struct State {
    ports: HashMap<u16, PortAudit>,
    untracked: u64,
}

#[derive(Default)]
struct PortAudit {
    connections: u64,
    pass: u64,
    refuse: u64,
    unknown: u64,
    sources: SourceTable,
}

impl StrictAudit {
    /// An empty audit that adds its table evictions to `evictions`.
    pub fn new(evictions: Counter) -> Self {
        StrictAudit {
            since: SystemTime::now(),
            state: Mutex::default(),
            evictions,
        }
    }

    /// Notes one finished connection; nothing for a STRICT port or one that carried nothing.
    pub fn record(&self, record: &Record) {
        let Some(fate) = record.strict_fate() else {
            return;
        };
        // Read before the lock: the clock is the costliest part of a table update.
        let now = (fate.verdict != StrictVerdict::Pass).then(SystemTime::now);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.ports.len() >= MAX_PORTS && !state.ports.contains_key(&record.workload_port) {
            state.untracked += 1;
            return;
        }
        let port = state.ports.entry(record.workload_port).or_default();
        port.connections += 1;
        match fate.verdict {
            StrictVerdict::Pass => port.pass += 1,
            StrictVerdict::Refuse => port.refuse += 1,
            StrictVerdict::Unknown => port.unknown += 1,
        }
        if let Some(now) = now {
            if port.sources.see(record.source.ip(), fate, record.tls.as_deref(), now) {
                self.evictions.inc();
            }
        }
    }

    /// The audit so far; `mode_of` gives each port's mode in force now. Built under the lock
    /// (at most 128 tables of 256 sources): an admin request is rare, and the connections that
    /// end meanwhile wait for it rather than for a copy of every table.
    pub fn report(&self, mode_of: impl Fn(u16) -> MtlsMode) -> AuditReport {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ports: Vec<PortReport> = state
            .ports
            .iter()
            .map(|(&port, audit)| PortReport {
                port,
                mode: mode_of(port),
                connections: audit.connections,
                pass: audit.pass,
                refuse: audit.refuse,
                unknown: audit.unknown,
                evicted_sources: audit.sources.evicted(),
                sources: audit.sources.report(),
            })
            .collect();
        let untracked_connections = state.untracked;
        drop(state);
        ports.sort_by_key(|port| port.port);
        AuditReport {
            since_unix: unix_seconds(self.since),
            max_sources_per_port: MAX_SOURCES_PER_PORT,
            max_ports: MAX_PORTS,
            untracked_connections,
            ports,
        }
    }
}
