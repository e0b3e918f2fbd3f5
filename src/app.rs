//! Start-up and shutdown of `peerguard run`: load policy and credentials, bind every
//! listener, serve until told to stop, then drain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{CertSource, Config};
use crate::inbound::connection::DataPath;
use crate::inbound::listener::{Listener, Route};
use crate::net;
use crate::policy::{Loaded, PolicyError, PolicySet, Workload};
use crate::state::{Live, PolicySnapshot, TlsSnapshot};
use crate::tls::credentials::{Credentials, CredentialsError};
use crate::tls::server_config::ServerConfigError;

/// Why the proxy could not start. The policy case has its own exit code (2), as in `check`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("certificates: {0}")]
    Credentials(#[from] CredentialsError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] ServerConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A started proxy: where it listens, and the handle that stops it.
pub struct Running {
    /// The transparent listener's bound address.
    pub inbound: Option<SocketAddr>,
    /// The explicit listeners' bound addresses, in `--listen` order.
    pub explicit: Vec<SocketAddr>,
    pub policy: Arc<Live<PolicySnapshot>>,
    pub tls: Arc<Live<TlsSnapshot>>,
    shutdown: watch::Sender<bool>,
    listeners: JoinSet<()>,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

/// Loads the policy file or directory (none: every port PERMISSIVE) and logs its warnings,
/// including those that depend on the workload.
pub fn load_policy(path: Option<&Path>, workload: &Workload) -> Result<Loaded, PolicyError> {
    let loaded = match path {
        Some(path) => PolicySet::load(path)?,
        None => Loaded {
            set: PolicySet::empty(),
            warnings: Vec::new(),
            files: Vec::new(),
            skipped_documents: 0,
        },
    };
    for warning in loaded.warnings.iter().chain(&loaded.set.warnings_for(workload)) {
        tracing::warn!("policy: {warning}");
    }
    Ok(loaded)
}

pub fn load_credentials(source: &CertSource) -> Result<Credentials, CredentialsError> {
    match source {
        CertSource::Dir(dir) => Credentials::load_dir(dir),
        CertSource::Files { cert, key, ca } => Credentials::load_files(cert, key, ca),
    }
}

/// Loads everything, binds every listener and starts serving. Listening addresses with port 0
/// get a free port; `Running` says which.
pub async fn start(config: &Config, workload: Workload) -> Result<Running, StartError> {
    let loaded = load_policy(config.policy.as_deref(), &workload)?;
    let policy = Arc::new(Live::new(PolicySnapshot::new(1, workload, loaded)));
    let credentials = load_credentials(&config.certs)?;
    let tls = Arc::new(Live::new(TlsSnapshot::new(1, &credentials, &config.trust_domain)?));
    let data_path = Arc::new(DataPath {
        policy: policy.clone(),
        tls: tls.clone(),
        limits: config.limits,
    });

    let bind = |addr: SocketAddr| net::bind_listener(addr).map_err(|source| StartError::Bind { addr, source });
    let mut listeners = Vec::new();
    let mut explicit = Vec::new();
    for spec in &config.explicit {
        let tcp = bind(spec.listen)?;
        explicit.push(tcp.local_addr().map_err(|source| StartError::Bind {
            addr: spec.listen,
            source,
        })?);
        listeners.push(Listener {
            tcp,
            route: Route::Explicit { app: spec.app },
        });
    }
    let mut inbound = None;
    if let Some(addr) = config.inbound {
        let tcp = bind(addr)?;
        let bound = tcp.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        inbound = Some(bound);
        let own_ports: Arc<[u16]> = [bound.port(), config.admin.port(), config.health.port()].into();
        listeners.push(Listener {
            tcp,
            route: Route::Transparent {
                app_host: config.app_host,
                own_ports,
            },
        });
    }

    let (shutdown, stop) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(listener.run(data_path.clone(), connections.clone(), stop.clone()));
    }
    Ok(Running {
        inbound,
        explicit,
        policy,
        tls,
        shutdown,
        listeners: tasks,
        connections,
        max_connections: config.max_connections,
    })
}

impl Running {
    /// Stops accepting (listeners close), then waits up to `drain_timeout` for open
    /// connections to finish. Returns how many were still open when the time ran out.
    pub async fn drain(mut self, drain_timeout: Duration) -> usize {
        self.shutdown.send_replace(true);
        while self.listeners.join_next().await.is_some() {}
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let everyone_done = self.connections.acquire_many(all);
        match tokio::time::timeout(drain_timeout, everyone_done).await {
            Ok(_) => 0,
            Err(_) => self.max_connections - self.connections.available_permits(),
        }
    }
}

/// `peerguard run`: start, serve until SIGTERM or SIGINT, drain, return. A second signal
/// during the drain ends it at once.
pub async fn run(config: Config, workload: Workload) -> Result<(), StartError> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), workload = ?workload, "starting");
    let running = start(&config, workload).await?;
    tracing::info!(inbound = ?running.inbound, explicit = ?running.explicit, "listening");
    wait_for_stop_signal().await;
    tracing::info!(drain_timeout = ?config.drain_timeout, "draining");
    tokio::select! {
        left = running.drain(config.drain_timeout) => tracing::info!(left_open = left, "drained"),
        _ = wait_for_stop_signal() => tracing::warn!("second signal: exiting without waiting"),
    }
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
