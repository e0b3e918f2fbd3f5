//! The validated, immutable configuration of one `peerguard run` process.
//! - `workload`: who the workload is, from the command line or the downward-API labels file.
//! - `probes`: the app's kubelet probes that the health port answers for it.
//! - `mesh_ca`: where and how the workload certificate is asked of the mesh CA.

mod mesh_ca;
mod probes;
mod workload;

pub use mesh_ca::{MeshCaConfig, MeshCaError};
pub use probes::{AppProbe, AppProbes, ProbeCheck, ProbeError};
pub use workload::{read_labels_file, workload_from, WorkloadError};

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{LogFormat, RunArgs};
use crate::policy::{ConflictingOverride, ProtocolOverrides, Workload};
use crate::tls::identity::is_trust_domain;

impl std::fmt::Display for AppHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppHost::Address(ip) => ip.fmt(f),
            AppHost::OriginalDestination => f.write_str("original"),
        }
    }
}

impl std::fmt::Display for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertSource::Dir(dir) => write!(f, "{}", dir.display()),
            CertSource::Files { cert, key, ca } => {
                write!(f, "{}, {}, {}", cert.display(), key.display(), ca.display())
            }
            CertSource::MeshCa(ca) => write!(f, "mesh CA at {} as {}", ca.address, ca.identity),
        }
    }
}

/// An explicit listener: connections to `listen` go to the app at `app`; the workload port is
/// `app`'s port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplicitListener {
    pub listen: SocketAddr,
    pub app: SocketAddr,
}

/// Where transparent-mode connections reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppHost {
    /// A fixed address (default 127.0.0.1), on the original destination port.
    Address(IpAddr),
    /// The connection's original destination address (the pod IP).
    OriginalDestination,
}

/// Where the workload's certificate, key and mesh roots come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    /// Istio's layout: cert-chain.pem, key.pem, root-cert.pem.
    Dir(PathBuf),
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
    /// Issued by the mesh CA over gRPC, renewed before expiry; only the roots are a file.
    MeshCa(MeshCaConfig),
}

/// Where the certificate in use comes from, as `/config_dump` and the metrics say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOrigin {
    /// `file` or `mesh_ca`.
    pub kind: &'static str,
    /// The file path(s), or the CA's address.
    pub from: String,
}

impl CertSource {
    pub fn describe(&self) -> CertOrigin {
        match self {
            CertSource::MeshCa(ca) => CertOrigin {
                kind: "mesh_ca",
                from: ca.address.clone(),
            },
            files => CertOrigin {
                kind: "file",
                from: files.to_string(),
            },
        }
    }
}

/// Per-connection limits of the data path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_client_hello: usize,
    pub sniff_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

/// The Kubernetes API as the policy source (`--policy-source kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSource {
    /// `--kubeconfig`; `None`: the in-cluster configuration (service-account token).
    pub kubeconfig: Option<PathBuf>,
    /// Longest wait between retries of a failed list or watch.
    pub retry_max: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Who the proxy fronts: namespace, labels, root namespace.
    pub workload: Workload,
    /// The downward-API labels file the labels came from, re-read when it changes.
    pub labels_file: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    /// `Some`: policy comes from the Kubernetes API, and `policy` is `None`.
    pub kubernetes: Option<KubernetesSource>,
    pub trust_domain: String,
    /// How long a TLS session may be resumed after its full handshake.
    pub session_lifetime: Duration,
    /// `--app-protocol`: what the app speaks on a port, whatever the Services say.
    pub app_protocols: ProtocolOverrides,
    pub inbound: Option<SocketAddr>,
    pub explicit: Vec<ExplicitListener>,
    pub app_host: AppHost,
    pub certs: CertSource,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    /// Where Prometheus scrapes; `None` when turned off.
    pub metrics: Option<SocketAddr>,
    /// The app's kubelet probes, answered on the health port.
    pub app_probes: AppProbes,
    pub log_format: LogFormat,
    pub limits: Limits,
    pub drain: DrainTimes,
    pub max_connections: usize,
}

/// How a drain goes after SIGTERM: readiness turns 503 at once; the listeners keep accepting
/// for `accept`; then they close, and open connections are cut `timeout` after the SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimes {
    pub accept: Duration,
    pub timeout: Duration,
}

/// A command line that cannot make a working proxy.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--listen {spec:?}: {problem}")]
    Listen { spec: String, problem: String },
    #[error(
        "--trust-domain {0:?} is not a trust domain name: it is the host part of the mesh's SPIFFE IDs, \
         lowercase letters, digits, `.`, `-` and `_`, such as cluster.local (without spiffe:// or a path)"
    )]
    TrustDomain(String),
    #[error("--inbound {0:?}: expected an address like 0.0.0.0:15006, or `none`")]
    Inbound(String),
    #[error("--metrics {0:?}: expected an address like 0.0.0.0:15090, or `none`")]
    Metrics(String),
    #[error("--app-host {0:?}: expected an IP address, or `original`")]
    AppHost(String),
    #[error("no listener: give --inbound ADDR and/or --listen LISTEN=APP")]
    NoListener,
    #[error("no certificates: give --cert-dir DIR, or --cert, --key and --ca, or --ca-address HOST:PORT")]
    NoCertificates,
    #[error(transparent)]
    MeshCa(#[from] MeshCaError),
    #[error("--admin {0} is not a loopback address; add --admin-allow-non-loopback to expose it")]
    AdminNotLoopback(SocketAddr),
    #[error("--max-client-hello must be at least 64 bytes")]
    ClientHelloCap,
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--policy reads files: it cannot be combined with --policy-source kubernetes or --kubeconfig")]
    PolicyWithKubernetes,
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    AppProbe(#[from] ProbeError),
    #[error(transparent)]
    AppProtocol(#[from] ConflictingOverride),
}

impl Config {
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
        if !is_trust_domain(&args.trust_domain) {
            return Err(ConfigError::TrustDomain(args.trust_domain.clone()));
        }
        let inbound = optional_address(&args.inbound).map_err(ConfigError::Inbound)?;
        let metrics = optional_address(&args.metrics).map_err(ConfigError::Metrics)?;
        let explicit = args
            .listen
            .iter()
            .map(|spec| parse_listen(spec))
            .collect::<Result<Vec<_>, _>>()?;
        if inbound.is_none() && explicit.is_empty() {
            return Err(ConfigError::NoListener);
        }
        let app_host = match args.app_host.as_str() {
            "original" => AppHost::OriginalDestination,
            text => AppHost::Address(text.parse().map_err(|_| ConfigError::AppHost(text.to_string()))?),
        };
        let workload = workload_from(&args.workload)?;
        let certs = match (&args.cert_dir, &args.cert, &args.key, &args.ca) {
            _ if args.mesh_ca.ca_address.is_some() => CertSource::MeshCa(MeshCaConfig::from_args(
                &args.mesh_ca,
                &args.trust_domain,
                &workload.namespace,
            )?),
            (Some(dir), ..) => CertSource::Dir(dir.clone()),
            (None, Some(cert), Some(key), Some(ca)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            _ => return Err(ConfigError::NoCertificates),
        };
        if !args.admin.ip().is_loopback() && !args.admin_allow_non_loopback {
            return Err(ConfigError::AdminNotLoopback(args.admin));
        }
        if args.max_client_hello < 64 {
            return Err(ConfigError::ClientHelloCap);
        }
        if args.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        let kubernetes = match (args.source.kubernetes(), &args.policy) {
            (false, _) => None,
            (true, Some(_)) => return Err(ConfigError::PolicyWithKubernetes),
            (true, None) => Some(KubernetesSource {
                kubeconfig: args.source.kubeconfig.clone(),
                retry_max: args.kube_retry_max,
            }),
        };
        Ok(Config {
            workload,
            labels_file: args.workload.labels_file.clone(),
            policy: args.policy.clone(),
            kubernetes,
            trust_domain: args.trust_domain.clone(),
            session_lifetime: args.session_lifetime,
            app_protocols: ProtocolOverrides::new(&args.app_protocol)?,
            inbound,
            explicit,
            app_host,
            certs,
            admin: args.admin,
            health: args.health,
            metrics,
            app_probes: AppProbes::from_args(&args.app_probe, args.kube_app_probers.as_deref())?,
            log_format: args.log_format,
            limits: Limits {
                max_client_hello: args.max_client_hello,
                sniff_timeout: args.sniff_timeout,
                handshake_timeout: args.handshake_timeout,
                idle_timeout: args.idle_timeout,
                connect_timeout: args.connect_timeout,
            },
            drain: DrainTimes {
                accept: args.drain_accept,
                timeout: args.drain_timeout,
            },
            max_connections: args.max_connections,
        })
    }
}

/// An address, or `none` (also `off` or empty) for a listener turned off; the text back if
/// it is neither.
fn optional_address(text: &str) -> Result<Option<SocketAddr>, String> {
    match text {
        "none" | "off" | "" => Ok(None),
        text => text.parse().map(Some).map_err(|_| text.to_string()),
    }
}

/// `LISTEN=APP`, each side `IP:PORT` or `localhost:PORT`.
fn parse_listen(spec: &str) -> Result<ExplicitListener, ConfigError> {
    let bad = |problem: String| ConfigError::Listen {
        spec: spec.to_owned(),
        problem,
    };
    let (listen, app) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected LISTEN=APP, e.g. 127.0.0.1:18080=127.0.0.1:8080".to_owned()))?;
    Ok(ExplicitListener {
        listen: endpoint(listen).map_err(|problem| bad(format!("LISTEN {problem}")))?,
        app: endpoint(app).map_err(|problem| bad(format!("APP {problem}")))?,
    })
}

/// `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` read as 127.0.0.1. Other host names are not
/// resolved: a name that resolves to several addresses (`localhost` itself is often `::1`
/// first) would make the address peerguard binds or dials a guess.
fn endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port: write it as 127.0.0.1:8080"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: `{port}` is not a port (1..65535)"))?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)));
    }
    if host.contains(':') {
        return Err(format!("`{text}`: put an IPv6 address in brackets, as [::1]:{port}"));
    }
    if host.is_empty() || host.parse::<IpAddr>().is_err() {
        return Err(format!(
            "`{text}`: `{host}` is not an IP address (host names other than localhost are not resolved)"
        ));
    }
    Err(format!("`{text}` is not an address like 127.0.0.1:8080"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(spec: &str) -> String {
        match parse_listen(spec) {
            Err(ConfigError::Listen { spec: quoted, problem }) if quoted == spec => problem,
            other => panic!("{spec}: {other:?}"),
        }
    }

    #[test]
    fn listen_specs_take_addresses_and_localhost() {
        assert_eq!(
            parse_listen("127.0.0.1:18080=127.0.0.1:8080").unwrap(),
            ExplicitListener {
                listen: "127.0.0.1:18080".parse().unwrap(),
                app: "127.0.0.1:8080".parse().unwrap()
            }
        );
        assert_eq!(
            parse_listen("localhost:25000=LOCALHOST:24000").unwrap(),
            ExplicitListener {
                listen: "127.0.0.1:25000".parse().unwrap(),
                app: "127.0.0.1:24000".parse().unwrap()
            }
        );
        assert_eq!(
            parse_listen("[::]:18080=[::1]:8080").unwrap().app,
            "[::1]:8080".parse().unwrap()
        );
    }

    #[test]
    fn a_bad_listen_spec_says_which_side_is_wrong_and_why() {
        assert_eq!(
            problem("127.0.0.1:18080"),
            "expected LISTEN=APP, e.g. 127.0.0.1:18080=127.0.0.1:8080"
        );
        assert_eq!(
            problem("127.0.0.1:18080="),
            "APP `` has no port: write it as 127.0.0.1:8080"
        );
        assert_eq!(
            problem("=127.0.0.1:8080"),
            "LISTEN `` has no port: write it as 127.0.0.1:8080"
        );
        assert_eq!(
            problem("127.0.0.1:18080=db.local:8080"),
            "APP `db.local:8080`: `db.local` is not an IP address (host names other than localhost are not resolved)"
        );
        assert_eq!(
            problem("127.0.0.1:http=127.0.0.1:8080"),
            "LISTEN `127.0.0.1:http`: `http` is not a port (1..65535)"
        );
        assert_eq!(
            problem("::1:18080=127.0.0.1:8080"),
            "LISTEN `::1:18080`: put an IPv6 address in brackets, as [::1]:18080"
        );
    }
}
