//! Live state, with one owner: the policy and the credentials in force.
//!
//! The store loads, validates, keeps the last good snapshot and publishes it; a connection
//! takes a snapshot once and keeps it, so a change never alters the rules under an open
//! connection. Where new state comes from is not its business: a *source* hands it validated
//! documents ([`Store::publish_policy`]) or credentials ([`Store::publish_credentials`]). The
//! files are one source ([`Store::reload_policy_files`], [`Store::reload_certificate_files`]);
//! the Kubernetes API and the mesh CA plug in the same way. `reload` decides *when*; the data
//! path only reads.
//!
//! - `live`: a value replaced whole.
//! - `policy`: one policy generation resolved for the workload (`PolicySnapshot`).
//! - `tls`: one credentials generation ready for handshakes (`TlsSnapshot`).
//! - `renewal`: how renewals from the mesh CA are going (`Renewal`).
//! - `source`: where the policy comes from and how that source is doing (`SourceStatus`).
//!
//! With the Kubernetes API as the source, the store opens with generation 0, an empty
//! placeholder that no connection ever reads: the listeners start accepting only once the first
//! complete list is published as generation 1 ([`Store::policy_in_force`]).

mod live;
mod policy;
mod renewal;
mod source;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

pub use live::Live;
pub use policy::{PolicySnapshot, PortMode};
pub use renewal::Renewal;
pub use source::{ClusterStatus, ObjectStatus, ResourceStatus, SourceStatus, WatchState};
pub use tls::TlsSnapshot;

use crate::config::{CertSource, Config};
use crate::metrics::Metrics;
use crate::policy::{Loaded, PolicyError, ProtocolOverrides, Workload};
use crate::tls::credentials::{load_roots, Credentials, CredentialsError};
use crate::tls::identity::Rfc3339;
use crate::tls::server_config::ServerConfigError;

/// Why new certificates could not be put in use.
#[derive(Debug, thiserror::Error)]
pub enum TlsLoadError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("TLS configuration: {0}")]
    ServerConfig(#[from] ServerConfigError),
    /// A mesh-CA source has no certificate file: its first certificate comes from the CA.
    #[error("the workload certificate comes from the mesh CA and has not been issued yet")]
    NotIssuedYet,
}

/// Why the store could not open: nothing to serve with yet.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("certificates: {0}")]
    Certificates(#[from] TlsLoadError),
}

/// What turns documents and credentials into snapshots; fixed for the process.
struct Settings {
    /// `--app-protocol`, applied to every policy generation.
    overrides: ProtocolOverrides,
    trust_domain: String,
    session_lifetime: Duration,
    /// The file sources.
    policy_path: Option<PathBuf>,
    certs: CertSource,
}

pub struct Store {
    policy: Live<PolicySnapshot>,
    tls: Live<TlsSnapshot>,
    /// Held while credentials are built and published, so that a roots reload (which keeps the
    /// certificate in use) never puts back a certificate a renewal has just replaced.
    publishing_credentials: Mutex<()>,
    /// Renewals from the mesh CA; `None` with a file source.
    renewal: Mutex<Option<Renewal>>,
    /// Held while a new policy generation is made from the current one, so that two
    /// publishers (a source and a labels change) never both build on the same generation.
    publishing_policy: Mutex<()>,
    source: Mutex<SourceStatus>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl Store {
    /// Loads the first policy and credentials from the configured files; either failing is
    /// fatal at start, unlike on reload. With the Kubernetes source the policy is generation 0
    /// until the source publishes its first complete list.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<Store, OpenError> {
        let credentials = match &config.certs {
            CertSource::MeshCa(_) => return Err(OpenError::Certificates(TlsLoadError::NotIssuedYet)),
            files => read_files(files)?,
        };
        Self::open_with(config, metrics, &credentials)
    }

    /// Like [`Store::open`], with the first credentials given (the mesh CA's first issuance).
    pub fn open_with(config: &Config, metrics: Arc<Metrics>, credentials: &Credentials) -> Result<Store, OpenError> {
        let settings = Settings {
            overrides: config.app_protocols.clone(),
            trust_domain: config.trust_domain.clone(),
            session_lifetime: config.session_lifetime,
            policy_path: config.policy.clone(),
            certs: config.certs.clone(),
        };
        let (generation, loaded, source) = match &config.kubernetes {
            None => (
                1,
                Loaded::from_path(settings.policy_path.as_deref())?,
                SourceStatus::Files {
                    path: settings.policy_path.clone(),
                },
            ),
            Some(_) => (
                0,
                Loaded::from_path(None)?,
                SourceStatus::Kubernetes(ClusterStatus::default()),
            ),
        };
        let policy = settings.policy_snapshot(generation, config.workload.clone(), loaded);
        let tls = settings.tls_snapshot(1, credentials)?;
        log_in_use(&tls, &settings.trust_domain);
        metrics.policy_in_force(generation);
        metrics.certificate_in_force(&settings.certs.describe(), &tls.serial, tls.not_after);
        let renewal = matches!(settings.certs, CertSource::MeshCa(_)).then(Renewal::default);
        Ok(Store {
            policy: Live::new(policy),
            tls: Live::new(tls),
            publishing_credentials: Mutex::new(()),
            publishing_policy: Mutex::new(()),
            renewal: Mutex::new(renewal),
            source: Mutex::new(source),
            settings,
            metrics,
        })
    }

    /// Returns once a policy is in force (generation 1 or later): at once with files.
    pub async fn policy_in_force(&self) {
        self.policy.wait_for(|policy| policy.generation > 0).await;
    }

    /// Where the policy comes from and how that source is doing.
    pub fn source_status(&self) -> SourceStatus {
        self.source.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A source reports how it is doing (`/config_dump`, readiness).
    pub fn set_source_status(&self, status: SourceStatus) {
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// The workload's labels changed (`kubectl label pod`): the documents in force are resolved
    /// again for the new labels, as the next generation. Before the first policy there is
    /// nothing to resolve yet; the first one is resolved for the new labels.
    pub fn relabel(&self, labels: BTreeMap<String, String>) {
        let _publishing = self.publishing_policy.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.policy();
        let mut workload = current.workload.clone();
        workload.labels = labels;
        let generation = if current.generation == 0 {
            0
        } else {
            current.generation + 1
        };
        let loaded = Loaded {
            set: current.set.clone(),
            warnings: Vec::new(),
            files: current.files.clone(),
            skipped_documents: 0,
        };
        self.policy
            .replace(self.settings.policy_snapshot(generation, workload, loaded));
        if generation > 0 {
            self.metrics.policy_reloaded(generation);
            tracing::info!(
                generation,
                "workload labels changed; every port resolved again; new connections use it"
            );
        }
    }

    /// The policy in force: take it once per connection.
    pub fn policy(&self) -> Arc<PolicySnapshot> {
        self.policy.current()
    }

    /// The credentials in force: take them once per handshake.
    pub fn tls(&self) -> Arc<TlsSnapshot> {
        self.tls.current()
    }

    /// The policy files the file source reads, if any.
    pub fn policy_path(&self) -> Option<&std::path::Path> {
        self.settings.policy_path.as_deref()
    }

    /// The certificate files the file source reads.
    pub fn certificate_source(&self) -> &CertSource {
        &self.settings.certs
    }

    /// Puts a validated policy in force as the next generation; new connections use it.
    pub fn publish_policy(&self, loaded: Loaded) -> u64 {
        let _publishing = self.publishing_policy.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.policy();
        let generation = current.generation + 1;
        let files = loaded.files.len();
        self.policy.replace(
            self.settings
                .policy_snapshot(generation, current.workload.clone(), loaded),
        );
        if generation == 1 {
            // The first policy of a source that starts without one (the Kubernetes API).
            self.metrics.policy_in_force(generation);
            tracing::info!(generation, "first policy in force; the listeners accept from now on");
        } else {
            self.metrics.policy_reloaded(generation);
            tracing::info!(generation, files, "policy reloaded; new connections use it");
        }
        generation
    }

    /// Puts credentials in force as the next generation; new handshakes use them and every
    /// earlier TLS session ends (its resumption store goes with the old generation). A set that
    /// cannot make a TLS configuration keeps the old one.
    pub fn publish_credentials(&self, credentials: &Credentials) -> Result<(), TlsLoadError> {
        let _publishing = self.lock_publishing_credentials();
        self.put_in_use(credentials)?;
        self.metrics.certificate_reloaded();
        Ok(())
    }

    /// Puts a certificate the mesh CA issued in force, as [`Store::publish_credentials`] does,
    /// and counts the renewal; the next one is due at `next_renewal`.
    pub fn publish_issued(&self, credentials: &Credentials, next_renewal: SystemTime) -> Result<(), TlsLoadError> {
        let _publishing = self.lock_publishing_credentials();
        self.put_in_use(credentials)?;
        self.metrics.certificate_renewed(true, next_renewal);
        self.update_renewal(|renewal| {
            renewal.ok += 1;
            renewal.next_at = Some(next_renewal);
            renewal.last_error = None;
        });
        Ok(())
    }

    /// Counts a renewal that failed (the certificate in use stays) and when it is retried.
    pub fn renewal_failed(&self, error: String, retry_at: SystemTime) {
        self.metrics.certificate_renewed(false, retry_at);
        self.update_renewal(|renewal| {
            renewal.failed += 1;
            renewal.next_at = Some(retry_at);
            renewal.last_error = Some(error);
        });
    }

    /// When the certificate in use is due for renewal.
    pub fn renewal_scheduled(&self, at: SystemTime) {
        self.metrics.certificate_renewal_due(at);
        self.update_renewal(|renewal| renewal.next_at = Some(at));
    }

    /// How renewals from the mesh CA are going; `None` with a file source.
    pub fn renewal(&self) -> Option<Renewal> {
        self.renewal.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update_renewal(&self, update: impl FnOnce(&mut Renewal)) {
        if let Some(renewal) = self.renewal.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            update(renewal);
        }
    }

    fn lock_publishing_credentials(&self) -> MutexGuard<'_, ()> {
        self.publishing_credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds the next generation from `credentials` and makes it the one in use.
    fn put_in_use(&self, credentials: &Credentials) -> Result<(), TlsLoadError> {
        let generation = self.tls().generation + 1;
        let snapshot = self.settings.tls_snapshot(generation, credentials)?;
        self.metrics
            .certificate_in_force(&self.settings.certs.describe(), &snapshot.serial, snapshot.not_after);
        log_in_use(&snapshot, &self.settings.trust_domain);
        self.tls.replace(snapshot);
        Ok(())
    }

    /// Re-reads the policy files; a failure keeps the last good policy and is counted.
    pub fn reload_policy_files(&self) {
        if self.settings.policy_path.is_none() {
            return;
        }
        match Loaded::from_path(self.settings.policy_path.as_deref()) {
            Ok(loaded) => {
                self.publish_policy(loaded);
            }
            Err(e) => {
                self.metrics.policy_reload_failed();
                tracing::error!(
                    error = %e,
                    generation = self.policy().generation,
                    "policy reload failed; the last good policy stays in force"
                );
            }
        }
    }

    /// Re-reads the certificate files (with the mesh CA, the roots file only, keeping the issued
    /// certificate); a failure keeps the last good credentials and is counted.
    pub fn reload_certificate_files(&self) {
        let publishing = self.lock_publishing_credentials();
        let published = match &self.settings.certs {
            CertSource::MeshCa(ca) => load_roots(&ca.root_cert)
                .map_err(TlsLoadError::from)
                .map(|roots| Credentials {
                    roots,
                    ..self.tls().credentials.clone()
                }),
            files => read_files(files),
        }
        .and_then(|credentials| self.put_in_use(&credentials));
        drop(publishing);
        match published {
            Ok(()) => self.metrics.certificate_reloaded(),
            Err(e) => {
                self.metrics.certificate_reload_failed();
                tracing::error!(
                    error = %e,
                    generation = self.tls().generation,
                    "certificate reload failed; the last good certificates stay in use"
                );
            }
        }
    }
}

impl Settings {
    fn policy_snapshot(&self, generation: u64, workload: Workload, loaded: Loaded) -> PolicySnapshot {
        for warning in loaded.warnings_for(&workload) {
            tracing::warn!("policy: {warning}");
        }
        PolicySnapshot::new(generation, workload, &self.overrides, &self.trust_domain, loaded)
    }

    fn tls_snapshot(&self, generation: u64, credentials: &Credentials) -> Result<TlsSnapshot, TlsLoadError> {
        Ok(TlsSnapshot::new(
            generation,
            credentials,
            &self.trust_domain,
            self.session_lifetime,
        )?)
    }
}

/// Says which certificate new handshakes use and until when; warns when its own SPIFFE ID is
/// outside the trust domain, where every mesh peer would refuse it.
fn log_in_use(tls: &TlsSnapshot, trust_domain: &str) {
    let id = tls
        .identity
        .as_ref()
        .map_or_else(|| "none".to_string(), ToString::to_string);
    tracing::info!(
        generation = tls.generation,
        spiffe_id = %id,
        serial = %tls.serial,
        not_after = %Rfc3339(tls.not_after),
        "workload certificate in use; new handshakes present it"
    );
    match &tls.identity {
        Some(identity) if identity.trust_domain == trust_domain => {}
        _ => tracing::warn!(
            spiffe_id = %id,
            trust_domain,
            "the workload certificate's SPIFFE ID is not in --trust-domain: mesh peers of that trust domain will refuse it"
        ),
    }
}

/// The credentials a file source names.
fn read_files(source: &CertSource) -> Result<Credentials, TlsLoadError> {
    Ok(match source {
        CertSource::Dir(dir) => Credentials::load_dir(dir)?,
        CertSource::Files { cert, key, ca } => Credentials::load_files(cert, key, ca)?,
        CertSource::MeshCa(_) => return Err(TlsLoadError::NotIssuedYet),
    })
}
