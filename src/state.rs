//! Runtime state that changes while the process runs (policy, credentials), held as whole
//! immutable snapshots that are swapped, never edited. A connection takes a snapshot once and
//! keeps it, so a reload never changes the rules under an open connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::policy::{Loaded, PortPolicy, PortProtocol, ProtocolOverrides, Workload};
use crate::tls::credentials::Credentials;
use crate::tls::identity::SpiffeId;
use crate::tls::server_config::TlsAcceptors;

/// A value that is replaced whole; readers get the current `Arc` or wait for the next one.
#[derive(Debug)]
pub struct Live<T> {
    tx: watch::Sender<Arc<T>>,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live {
            tx: watch::Sender::new(Arc::new(value)),
        }
    }

    pub fn current(&self) -> Arc<T> {
        self.tx.borrow().clone()
    }

    pub fn replace(&self, value: T) {
        self.tx.send_replace(Arc::new(value));
    }
}

/// What one workload port resolved to: its effective mode, with what the access log says about
/// its source, and the app protocol that decides the ALPN of terminated connections.
#[derive(Debug, Clone)]
pub struct PortMode {
    /// Mode, source and annotation, as resolution gave them.
    pub policy: PortPolicy,
    /// `PeerAuthentication foo/finance (workload)`, formatted once per policy generation.
    pub label: Arc<str>,
    pub protocol: PortProtocol,
}

impl PortMode {
    fn new(policy: PortPolicy, protocol: PortProtocol) -> Self {
        let label: Arc<str> = match &policy.source {
            Some(s) => format!("{} {}/{} ({})", s.kind, s.namespace, s.name, s.level.as_str()).into(),
            None => "default (no policy applies)".into(),
        };
        PortMode {
            policy,
            label,
            protocol,
        }
    }
}

/// One loaded policy generation, resolved for this process's workload.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub generation: u64,
    pub workload: Workload,
    /// `--app-protocol`: fixed for the process, kept here so that a reload resolves with it.
    pub overrides: ProtocolOverrides,
    pub files: Vec<PathBuf>,
    pub loaded_at: SystemTime,
    /// Ports some applicable policy, Service or `--app-protocol` names.
    named: HashMap<u16, PortMode>,
    /// Every other port: resolution gives one answer for all ports nothing names.
    other: PortMode,
}

impl PolicySnapshot {
    /// Resolves every port the policy names up front, so a connection costs one hash lookup.
    pub fn new(generation: u64, workload: Workload, overrides: ProtocolOverrides, loaded: Loaded) -> Self {
        let set = &loaded.set;
        let known = set.known_ports(&workload, &overrides);
        let resolve = |port| PortMode::new(set.resolve(&workload, port), set.protocol(&workload, port, &overrides));
        let named = known.iter().map(|&port| (port, resolve(port))).collect();
        let unnamed_port = (1..=u16::MAX).find(|p| !known.contains(p)).unwrap_or(u16::MAX);
        let mut other = resolve(unnamed_port);
        other.policy.port = 0;
        PolicySnapshot {
            generation,
            workload,
            overrides,
            files: loaded.files,
            loaded_at: SystemTime::now(),
            named,
            other,
        }
    }

    pub fn port(&self, port: u16) -> &PortMode {
        self.named.get(&port).unwrap_or(&self.other)
    }

    /// The named ports in order, then the mode for all other ports.
    pub fn ports(&self) -> (Vec<&PortMode>, &PortMode) {
        let mut named: Vec<&PortMode> = self.named.values().collect();
        named.sort_by_key(|m| m.policy.port);
        (named, &self.other)
    }
}

/// Seconds since the Unix epoch (0 for earlier times), as `/config_dump`, readiness and the
/// expiry metric show certificate times.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One loaded set of workload credentials, ready for handshakes.
pub struct TlsSnapshot {
    pub generation: u64,
    pub acceptors: TlsAcceptors,
    pub identity: Option<SpiffeId>,
    pub serial: String,
    pub not_after: SystemTime,
}

impl TlsSnapshot {
    /// Whether the workload certificate has expired at `now`: readiness and `/config_dump` ask.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    pub fn new(
        generation: u64,
        credentials: &Credentials,
        trust_domain: &str,
        session_lifetime: std::time::Duration,
    ) -> Result<Self, crate::tls::server_config::ServerConfigError> {
        Ok(TlsSnapshot {
            generation,
            acceptors: TlsAcceptors::new(credentials, trust_domain, session_lifetime)?,
            identity: credentials.identity.clone(),
            serial: credentials.serial.clone(),
            not_after: credentials.not_after,
        })
    }
}
