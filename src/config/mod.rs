//! The validated, immutable configuration of one `peerguard run` process.
//! - `workload`: who the workload is, from the command line or the downward-API labels file.

mod workload;

pub use workload::{workload_from, WorkloadError};

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{LogFormat, RunArgs};
use crate::policy::{ConflictingOverride, ProtocolOverrides, Workload};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Istio's layout: cert-chain.pem, key.pem, root-cert.pem.
    Dir(PathBuf),
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
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

#[derive(Debug, Clone)]
pub struct Config {
    /// Who the proxy fronts: namespace, labels, root namespace.
    pub workload: Workload,
    pub policy: Option<PathBuf>,
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
    pub log_format: LogFormat,
    pub limits: Limits,
    pub drain: DrainTimes,
    pub max_connections: usize,
}

/// How a drain goes after SIGTERM: readiness turns 503 at once; the listeners keep accepting
/// for `accept`; then they close and open connections get `timeout`; then the rest are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimes {
    pub accept: Duration,
    pub timeout: Duration,
}

/// A command line that cannot make a working proxy.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--listen {0:?}: expected LISTEN=APP, e.g. 0.0.0.0:18080=127.0.0.1:8080")]
    Listen(String),
    #[error("--inbound {0:?}: expected an address like 0.0.0.0:15006, or `none`")]
    Inbound(String),
    #[error("--metrics {0:?}: expected an address like 0.0.0.0:15090, or `none`")]
    Metrics(String),
    #[error("--app-host {0:?}: expected an IP address, or `original`")]
    AppHost(String),
    #[error("no listener: give --inbound ADDR and/or --listen LISTEN=APP")]
    NoListener,
    #[error("no certificates: give --cert-dir DIR, or --cert, --key and --ca")]
    NoCertificates,
    #[error("--admin {0} is not a loopback address; add --admin-allow-non-loopback to expose it")]
    AdminNotLoopback(SocketAddr),
    #[error("--max-client-hello must be at least 64 bytes")]
    ClientHelloCap,
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    AppProtocol(#[from] ConflictingOverride),
}

impl Config {
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
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
        let certs = match (&args.cert_dir, &args.cert, &args.key, &args.ca) {
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
        Ok(Config {
            workload: workload_from(&args.workload)?,
            policy: args.policy.clone(),
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

fn parse_listen(spec: &str) -> Result<ExplicitListener, ConfigError> {
    let bad = || ConfigError::Listen(spec.to_string());
    let (listen, app) = spec.split_once('=').ok_or_else(bad)?;
    Ok(ExplicitListener {
        listen: listen.parse().map_err(|_| bad())?,
        app: app.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs_need_both_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:18080=127.0.0.1:8080").unwrap(),
            ExplicitListener {
                listen: "127.0.0.1:18080".parse().unwrap(),
                app: "127.0.0.1:8080".parse().unwrap()
            }
        );
        for bad in ["127.0.0.1:18080", "127.0.0.1:18080=", "=127.0.0.1:8080", "a=b"] {
            assert!(matches!(parse_listen(bad), Err(ConfigError::Listen(spec)) if spec == bad));
        }
    }
}
