//! Start-up and shutdown of `peerguard run`: load policy and credentials, bind every
//! listener, serve until told to stop, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::admin::config_dump::{Addresses, ListenerInfo};
use crate::admin::health::{self, Readiness};
use crate::admin::{metrics_routes, server, Admin};
use crate::cli::LogFormat;
use crate::cluster::{self, ConnectError};
use crate::config::{CertSource, Config, DrainTimes};
use crate::inbound::connection::DataPath;
use crate::inbound::cut::Cut;
use crate::inbound::listener::{Listener, Route};
use crate::mesh_ca::{self, FirstCertificateError};
use crate::metrics::Metrics;
use crate::net;
use crate::outcome::client_text::LogStyle;
use crate::policy::PolicyError;
use crate::reload::{Fingerprints, Reloader};
use crate::store::{OpenError, Store, TlsLoadError};
use crate::strict_audit::StrictAudit;

/// Why the proxy could not start. The policy case has its own exit code (2), as in `check`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid policy: {0}")]
    Policy(PolicyError),
    #[error("certificates: {0}")]
    Certificates(TlsLoadError),
    #[error("{0}")]
    MeshCa(Box<FirstCertificateError>),
    #[error("cannot watch SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("policy source: {0}")]
    Kubernetes(ConnectError),
}

impl From<OpenError> for StartError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Policy(e) => StartError::Policy(e),
            OpenError::Certificates(e) => StartError::Certificates(e),
        }
    }
}

impl From<FirstCertificateError> for StartError {
    fn from(error: FirstCertificateError) -> Self {
        StartError::MeshCa(Box::new(error))
    }
}

/// How long cut connections get to write their records before the drain returns.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// A started proxy: where it listens, and the handle that stops it.
pub struct Running {
    /// The transparent listener's bound address.
    pub inbound: Option<SocketAddr>,
    /// The explicit listeners' bound addresses, in `--listen` order.
    pub explicit: Vec<SocketAddr>,
    /// The admin endpoint's bound address.
    pub admin: SocketAddr,
    /// The health endpoint's bound address.
    pub health: SocketAddr,
    /// The metrics endpoint's bound address, unless turned off.
    pub metrics: Option<SocketAddr>,
    /// The live policy and credentials.
    pub store: Arc<Store>,
    readiness: Arc<Readiness>,
    /// Stops the data-path listeners.
    shutdown: watch::Sender<bool>,
    /// Ends the connections a drain leaves open.
    cut: Arc<Cut>,
    /// Stops the admin and health endpoints and the reload watcher, after the drain: the
    /// readiness probe must keep answering 503 while connections drain.
    endpoints_shutdown: watch::Sender<bool>,
    listeners: JoinSet<()>,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

/// Loads everything, binds every listener and starts serving. Listening addresses with port 0
/// get a free port; `Running` says which.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    // Before the first load, so that a change racing it is seen by the first poll.
    let fingerprints = Fingerprints::of(config.policy.as_deref(), &config.certs, config.labels_file.as_deref());
    let metrics = Arc::new(Metrics::new());
    // With the mesh CA, nothing serves before the first certificate is in hand.
    let (store, renewal) = match &config.certs {
        CertSource::MeshCa(ca) => {
            let first = mesh_ca::first_certificate(ca).await?;
            let store = Store::open_with(config, metrics.clone(), &first.credentials)?;
            (Arc::new(store), Some((ca.clone(), first.renew_at)))
        }
        _ => (Arc::new(Store::open(config, metrics.clone())?), None),
    };
    let readiness = Arc::new(Readiness::new(store.clone()));
    let cut = Arc::new(Cut::default());
    let audit = Arc::new(StrictAudit::new(metrics.strict_audit_evictions()));
    let data_path = Arc::new(DataPath {
        store: store.clone(),
        limits: config.limits,
        log_style: match config.log_format {
            LogFormat::Text => LogStyle::Text,
            LogFormat::Json => LogStyle::Json,
        },
        cut: cut.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
    });
    let (endpoints_shutdown, endpoints_stop) = watch::channel(false);

    // The health endpoint first, so that a probe during start-up hears why it is not ready.
    let (health_tcp, health) = bind(config.health)?;
    tokio::spawn(server::serve(
        health_tcp,
        health::routes(readiness.clone(), Arc::new(config.app_probes.clone())),
        endpoints_stop.clone(),
    ));
    let (admin_tcp, admin) = bind(config.admin)?;
    let metrics_endpoint = match config.metrics {
        Some(addr) => {
            let (tcp, bound) = bind(addr)?;
            tokio::spawn(server::serve(
                tcp,
                metrics_routes(metrics.clone()),
                endpoints_stop.clone(),
            ));
            Some(bound)
        }
        None => None,
    };

    let mut listeners = Vec::new();
    let mut infos = Vec::new();
    let mut explicit = Vec::new();
    for spec in &config.explicit {
        let (tcp, address) = bind(spec.listen)?;
        explicit.push(address);
        infos.push(ListenerInfo {
            kind: "explicit",
            address,
            app: Some(spec.app),
        });
        listeners.push(Listener {
            tcp,
            route: Route::Explicit {
                app: spec.app,
                listen: address,
            },
        });
    }
    let mut inbound = None;
    if let Some(addr) = config.inbound {
        let (tcp, bound) = bind(addr)?;
        inbound = Some(bound);
        infos.push(ListenerInfo {
            kind: "transparent",
            address: bound,
            app: None,
        });
        let own_ports: Arc<[u16]> = [Some(bound), Some(admin), Some(health), metrics_endpoint]
            .into_iter()
            .flatten()
            .map(|addr| addr.port())
            .collect();
        listeners.push(Listener {
            tcp,
            route: Route::Transparent {
                app_host: config.app_host,
                own_ports,
            },
        });
    }

    if let Some(source) = &config.kubernetes {
        cluster::start(
            source,
            &config.workload,
            store.clone(),
            metrics.clone(),
            endpoints_stop.clone(),
        )
        .await
        .map_err(StartError::Kubernetes)?;
    }

    let (shutdown, stop) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let mut tasks = JoinSet::new();
    for listener in listeners {
        let (store, mut stop) = (store.clone(), stop.clone());
        let serve = listener.run(data_path.clone(), connections.clone(), stop.clone());
        // Bound now, accepting only once a policy is in force (at once with files; after the
        // first complete list from the API server): meanwhile the kernel's backlog holds
        // clients, so no connection is ever decided on a policy that is not there yet.
        tasks.spawn(async move {
            tokio::select! {
                () = store.policy_in_force() => serve.await,
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {}
            }
        });
    }
    readiness.listeners_bound();

    let admin_state = Arc::new(Admin {
        addresses: Addresses {
            listeners: infos,
            admin,
            health,
            metrics: metrics_endpoint,
        },
        store: store.clone(),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        audit,
    });
    tokio::spawn(server::serve(admin_tcp, admin_state.routes(), endpoints_stop.clone()));
    if let Some((ca, renew_at)) = renewal {
        tokio::spawn(mesh_ca::keep_fresh(ca, store.clone(), renew_at, endpoints_stop.clone()));
    }
    let reloader = Reloader::new(store.clone(), fingerprints, config.labels_file.clone());
    tokio::spawn(Arc::new(reloader).watch(endpoints_stop));

    Ok(Running {
        inbound,
        explicit,
        admin,
        health,
        metrics: metrics_endpoint,
        store,
        readiness,
        shutdown,
        cut,
        endpoints_shutdown,
        listeners: tasks,
        connections,
        max_connections: config.max_connections,
    })
}

/// Binds a listening socket and says where it listens (port 0 gets a free port).
fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let tcp = net::bind_listener(addr).map_err(|source| StartError::Bind { addr, source })?;
    let bound = tcp.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    Ok((tcp, bound))
}

impl Running {
    /// Readiness goes 503 at once, but the listeners keep accepting for `times.accept`: clients
    /// go on dialling the pod until the endpoint's removal has reached them all. Then the
    /// listeners close, open connections get the rest of `times.timeout` (counted from now, so
    /// the whole drain fits a known grace period), and those still open are cut (each still
    /// ends in a record, `end=drained` or `reason=drained`), as ztunnel's drain does. Returns
    /// how many were cut.
    pub async fn drain(mut self, times: DrainTimes) -> usize {
        self.readiness.draining();
        let deadline = tokio::time::Instant::now() + times.timeout;
        tokio::time::sleep(times.accept.min(times.timeout)).await;
        self.shutdown.send_replace(true);
        while self.listeners.join_next().await.is_some() {}
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let left = match tokio::time::timeout_at(deadline, self.connections.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => self.max_connections - self.connections.available_permits(),
        };
        if left > 0 {
            self.cut.cut();
            // A cut connection ends at its next poll; this bound only guards against a task
            // stuck outside the data path.
            let _ = tokio::time::timeout(CUT_GRACE, self.connections.acquire_many(all)).await;
        }
        self.endpoints_shutdown.send_replace(true);
        left
    }
}

/// `peerguard run`: start, serve until SIGTERM or SIGINT, drain, return. A second signal
/// during the drain ends it at once.
pub async fn run(config: Config) -> Result<(), StartError> {
    log_starting(&config);
    // Before anything says "serving": a SIGTERM from then on must drain, not kill.
    let mut stop = StopSignals::install().map_err(StartError::Signals)?;
    // Start-up can wait a while for the mesh CA; a SIGTERM meanwhile ends it.
    let running = tokio::select! {
        running = start(&config) => running?,
        () = stop.next() => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    if let Some(inbound) = running.inbound {
        tracing::info!(listen = %inbound, "transparent listener bound");
    }
    for (listen, spec) in running.explicit.iter().zip(&config.explicit) {
        tracing::info!(listen = %listen, app = %spec.app, "explicit listener bound");
    }
    tracing::info!(
        admin = %running.admin,
        health = %running.health,
        metrics = %running.metrics.map_or("none".to_string(), |m| m.to_string()),
        "serving"
    );
    stop.next().await;
    tracing::info!(
        accept_for = ?config.drain.accept,
        then_wait_for = ?config.drain.timeout,
        "draining: readiness is 503"
    );
    tokio::select! {
        left = running.drain(config.drain) => tracing::info!(cut = left, "drained"),
        () = stop.next() => tracing::warn!("second signal: exiting without waiting"),
    }
    Ok(())
}

/// The configuration in force, one field each (JSON fields under `--log-format json`).
fn log_starting(config: &Config) {
    let workload = &config.workload;
    let labels: Vec<String> = workload.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let listen: Vec<String> = config
        .explicit
        .iter()
        .map(|l| format!("{}={}", l.listen, l.app))
        .collect();
    let limits = &config.limits;
    tracing::info!(
        namespace = %workload.namespace,
        labels = %labels.join(","),
        root_namespace = %workload.root_namespace,
        trust_domain = %config.trust_domain,
        policy = %policy_source(config),
        certificates = %config.certs,
        inbound = %config.inbound.map_or_else(|| "none".into(), |a| a.to_string()),
        listen = %listen.join(" "),
        app_host = %config.app_host,
        admin = %config.admin,
        health = %config.health,
        metrics = %config.metrics.map_or_else(|| "none".into(), |a| a.to_string()),
        max_client_hello = limits.max_client_hello,
        sniff_timeout = ?limits.sniff_timeout,
        handshake_timeout = ?limits.handshake_timeout,
        connect_timeout = ?limits.connect_timeout,
        idle_timeout = ?limits.idle_timeout,
        session_lifetime = ?config.session_lifetime,
        drain_accept = ?config.drain.accept,
        drain_timeout = ?config.drain.timeout,
        max_connections = config.max_connections,
        "starting"
    );
}

/// Where the policy comes from, for the start-up line.
fn policy_source(config: &Config) -> String {
    match (&config.kubernetes, &config.policy) {
        (Some(source), _) => match &source.kubeconfig {
            Some(path) => format!("kubernetes (kubeconfig {})", path.display()),
            None => "kubernetes (in-cluster)".to_string(),
        },
        (None, Some(path)) => path.display().to_string(),
        (None, None) => "none (every port PERMISSIVE)".to_string(),
    }
}

/// SIGTERM and SIGINT (Ctrl-C), either of which stops the proxy.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
