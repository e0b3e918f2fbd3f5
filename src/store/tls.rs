//! One credentials generation, ready for handshakes: what a terminated connection reads.

use std::time::{Duration, SystemTime};

use crate::tls::credentials::Credentials;
use crate::tls::identity::SpiffeId;
use crate::tls::server_config::{ServerConfigError, TlsAcceptors};

pub struct TlsSnapshot {
    pub generation: u64,
    pub acceptors: TlsAcceptors,
    pub identity: Option<SpiffeId>,
    pub serial: String,
    pub not_after: SystemTime,
    /// What this generation was built from: a roots reload keeps the certificate and key.
    pub credentials: Credentials,
}

impl TlsSnapshot {
    pub fn new(
        generation: u64,
        credentials: &Credentials,
        trust_domain: &str,
        session_lifetime: Duration,
    ) -> Result<Self, ServerConfigError> {
        Ok(TlsSnapshot {
            generation,
            acceptors: TlsAcceptors::new(credentials, trust_domain, session_lifetime)?,
            identity: credentials.identity.clone(),
            serial: credentials.serial.clone(),
            not_after: credentials.not_after,
            credentials: credentials.clone(),
        })
    }

    /// Whether the workload certificate has expired at `now`: readiness and `/config_dump` ask.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }
}
