//! Command-line types (clap derive only; no behaviour lives here).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::policy::AppProtocol;
use crate::tls::identity::SpiffeId;

#[derive(Debug, Parser)]
#[command(
    name = "peerguard",
    version,
    about = "Inbound L4 sidecar proxy enforcing Istio peer authentication"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Show the effective mTLS mode and app protocol of a workload's ports, and what a described
    /// connection gets, and who may connect.
    Check(Box<CheckArgs>),
    /// For a client namespace and Service ports: which DestinationRule sets the client's TLS,
    /// which policy sets the server's mode, and whether they agree (istioctl's authn tls-check).
    TlsCheck(TlsCheckArgs),
    /// What switching the PERMISSIVE and DISABLE ports of a running peerguard to STRICT would
    /// break: the connections seen, the share STRICT would refuse, the sources to fix first.
    Audit(AuditArgs),
    /// Start a complete local sandbox: throwaway mesh CA, echo app, peerguard, and commands to try.
    Demo(DemoArgs),
    /// Write a development mesh CA and a workload certificate in the --cert-dir layout.
    Certs(CertsArgs),
    /// Serve a development mesh CA as Istio's gRPC certificate service (for `run --ca-address`).
    DevCa(DevCaArgs),
    /// Print (or apply) istio-iptables-compatible inbound redirect rules.
    Iptables(IptablesArgs),
}

/// Who the workload is (docs/policy.md#the-workload): flag first, then the downward-API
/// environment.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// The workload's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The workload's labels, `k=v,k=v`.
    #[arg(long, value_delimiter = ',', conflicts_with = "labels_file")]
    pub labels: Vec<String>,
    /// A downward-API labels file (`key="value"` per line), e.g. /etc/istio/pod/labels.
    #[arg(long)]
    pub labels_file: Option<PathBuf>,
    /// The mesh root namespace: policies here without a selector are mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
}

/// Where policy documents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicySourceKind {
    /// `--policy` files (none: every port PERMISSIVE).
    Files,
    /// The Kubernetes API: watched in the workload's and the root namespace.
    Kubernetes,
}

/// The Kubernetes API as the policy source (docs/kubernetes.md).
#[derive(Debug, Clone, Args)]
pub struct PolicySourceArgs {
    /// Where policy comes from: `files` (--policy) or `kubernetes` (the API server, in-cluster
    /// configuration unless --kubeconfig).
    #[arg(long, value_enum, default_value = "files")]
    pub policy_source: PolicySourceKind,
    /// A kubeconfig file for the Kubernetes source (its current context); implies
    /// `--policy-source kubernetes`.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

impl PolicySourceArgs {
    pub fn kubernetes(&self) -> bool {
        self.policy_source == PolicySourceKind::Kubernetes || self.kubeconfig.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// A PeerAuthentication YAML file, or a directory of *.yaml/*.yml/*.json files.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Longest wait between retries of a failed Kubernetes list or watch (they back off
    /// exponentially from 0.8 s up to this).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub kube_retry_max: Duration,
    /// The SPIFFE trust domain peers must belong to.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// What the app speaks on a workload port, `PORT=http1|http2|tcp`, repeatable; beats any
    /// Service's declaration. It decides the ALPN of terminated connections.
    #[arg(long = "app-protocol", value_name = "PORT=PROTOCOL", value_parser = crate::policy::parse_override)]
    pub app_protocol: Vec<(u16, AppProtocol)>,

    /// Transparent listener (iptables REDIRECT target); `none` disables it.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound: String,
    /// Explicit listener `LISTEN=APP`, repeatable, each `IP:PORT` or `localhost:PORT`
    /// (127.0.0.1); the workload port is APP's port.
    #[arg(long = "listen", value_name = "LISTEN=APP")]
    pub listen: Vec<String>,
    /// Where the app is reached in transparent mode: an address, or `original` for the
    /// connection's original destination address.
    #[arg(long, default_value = "127.0.0.1")]
    pub app_host: String,

    /// Directory with cert-chain.pem, key.pem and root-cert.pem.
    #[arg(long, conflicts_with_all = ["cert", "key", "ca"])]
    pub cert_dir: Option<PathBuf>,
    /// Workload certificate chain (PEM).
    #[arg(long, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// Workload private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Mesh root certificate(s) (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,

    #[command(flatten)]
    pub mesh_ca: MeshCaArgs,

    /// Admin endpoint (loopback only unless --admin-allow-non-loopback).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Allow the admin endpoint on a non-loopback address.
    #[arg(long)]
    pub admin_allow_non_loopback: bool,
    /// Health endpoint (readiness probe).
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub health: SocketAddr,
    /// An app probe the health port answers, `PATH=http:PORT/PATH` or `PATH=tcp:PORT`, e.g.
    /// `/app-health/app/livez=http:8080/healthz` (repeatable).
    #[arg(long)]
    pub app_probe: Vec<String>,
    /// The app probes as Istio's injector writes them (JSON: path -> httpGet/tcpSocket).
    #[arg(long, env = "ISTIO_KUBE_APP_PROBERS")]
    pub kube_app_probers: Option<String>,
    /// Metrics endpoint for Prometheus (`/stats/prometheus` only); `none` turns it off.
    #[arg(long, default_value = "0.0.0.0:15090")]
    pub metrics: String,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Largest ClientHello read while classifying.
    #[arg(long, default_value = "16384")]
    pub max_client_hello: usize,
    /// How long to wait for the first bytes of a connection.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sniff_timeout: Duration,
    /// How long a TLS handshake may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// How long a connection may carry no byte in either direction.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long connecting to the app may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How long after a full mTLS handshake its session may be resumed (also never past the
    /// client certificate's expiry).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub session_lifetime: Duration,
    /// After SIGTERM, how long the listeners keep accepting while readiness says 503 (clients
    /// learn late that the pod's endpoint is gone).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_accept: Duration,
    /// From SIGTERM, how long until the connections still open are cut (the listeners close
    /// after --drain-accept of it).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Most connections open at once; accepting pauses at the cap.
    #[arg(long, default_value = "65536")]
    pub max_connections: usize,
}

/// The workload certificate from the mesh CA instead of files (docs/mesh-ca.md): the flags and
/// the environment variables Istio's injector sets for pilot-agent.
#[derive(Debug, Clone, Args)]
pub struct MeshCaArgs {
    /// The mesh CA's gRPC address, `HOST:PORT` (Istio: istiod.istio-system.svc:15012). Replaces
    /// --cert-dir and --cert/--key/--ca.
    #[arg(long, env = "CA_ADDR", conflicts_with_all = ["cert_dir", "cert", "key", "ca"])]
    pub ca_address: Option<String>,
    /// The mesh root(s): verify the CA's TLS and the issued chain, and verify mesh clients.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    pub ca_root_cert: PathBuf,
    /// The projected service-account token (audience istio-ca) sent as `authorization: Bearer`.
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    pub ca_token_file: PathBuf,
    /// The cluster's ID, sent as `ClusterID` metadata (the CA picks the cluster whose API
    /// server reviews the token).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The workload's service account: the SPIFFE ID asked for is
    /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The private key made for each certificate.
    #[arg(long, value_enum, default_value = "ecdsa")]
    pub key_type: KeyType,
    /// The certificate lifetime asked for (the CA may shorten it).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// Renew when this fraction of the certificate's lifetime has passed (with a little jitter).
    #[arg(long, default_value = "0.5")]
    pub renew_ratio: f64,
    /// How long one request to the CA may take, connecting included.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ca_request_timeout: Duration,
    /// How long start-up waits for the first certificate (retrying) before it gives up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ca_start_timeout: Duration,
}

/// The workload key's algorithm in mesh-CA mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256, as Istio's agent makes by default.
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// A PeerAuthentication YAML file, or a directory.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub source: PolicySourceArgs,
    /// Only this workload port.
    #[arg(long)]
    pub port: Option<u16>,
    /// What the app speaks on a workload port, `PORT=http1|http2|tcp`, as `run` takes it.
    #[arg(long = "app-protocol", value_name = "PORT=PROTOCOL", value_parser = crate::policy::parse_override)]
    pub app_protocol: Vec<(u16, AppProtocol)>,
    /// Describe a plaintext connection.
    #[arg(long, conflicts_with = "tls")]
    pub plaintext: bool,
    /// Describe a TLS connection (with --alpn).
    #[arg(long)]
    pub tls: bool,
    /// The ALPN list the described TLS client offers, in its order.
    #[arg(long, value_delimiter = ',', requires = "tls")]
    pub alpn: Vec<String>,
    /// Authorize an mTLS peer with this SPIFFE ID (AuthorizationPolicy); `--plaintext` describes
    /// a peer without identity.
    #[arg(long, value_name = "SPIFFE_ID", conflicts_with = "plaintext")]
    pub principal: Option<SpiffeId>,
    /// The described client's address (ipBlocks, remoteIpBlocks, source.ip).
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<IpAddr>,
    /// The address the client dialled (destination.ip).
    #[arg(long, value_name = "IP")]
    pub destination_ip: Option<IpAddr>,
    /// The SNI the described client sends (connection.sni).
    #[arg(long)]
    pub sni: Option<String>,
    /// The mesh's trust domain: principals written in `cluster.local` are read in it.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct TlsCheckArgs {
    /// A policy file or directory: Services, DestinationRules and the servers' policies.
    #[arg(long)]
    pub policy: PathBuf,
    /// The namespace of the calling client.
    #[arg(long)]
    pub client_namespace: String,
    /// A Service host (`name.namespace.svc.cluster.local`) and, optionally, one of its ports;
    /// every Service port of the policy set without it.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: Option<String>,
    /// Whether clients without TLS settings use auto mTLS (Istio 1.5 and later), or send
    /// plaintext (Istio 1.1-1.4).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub auto_mtls: bool,
    /// The mesh root namespace: its policies without a selector are mesh-wide, and its
    /// exported DestinationRules are the last pool searched.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// Also say why: which policy and workload port, which pool, host and port entry.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// The admin endpoint of the running peerguard (its `run --admin`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Sources listed per port, those to fix first first; 0 lists every one kept.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// `json` prints the admin endpoint's `/strict_audit` document as it is.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo writes its CA, certificates and policy (default: a new temp directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// First port of the demo's block of loopback ports (base+80..base+1082); without it, the
    /// first free block from 18000 up.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Get the workload's certificate from a development mesh CA over Istio's gRPC CA service
    /// (served on base+1012), as in a mesh, instead of from files.
    #[arg(long)]
    pub mesh_ca: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Output directory (cert-chain.pem, key.pem, root-cert.pem).
    #[arg(long)]
    pub out: PathBuf,
    /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/app.
    #[arg(long)]
    pub spiffe: String,
    /// Directory of an existing CA (ca-cert.pem, ca-key.pem); created there if missing.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Certificate lifetime.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub validity: Duration,
    /// Overwrite certificates and a key already in --out.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DevCaArgs {
    /// Directory of the CA (ca-cert.pem, ca-key.pem); created there if missing. Its
    /// ca-cert.pem is the root for `run --ca-root-cert`.
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Where to serve `istio.v1.auth.IstioCertificateService`, with TLS.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub listen: SocketAddr,
    /// The longest certificate lifetime issued (and the lifetime when a request asks for none).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub max_validity: Duration,
    /// A file holding the one bearer token accepted; without it any non-empty token is.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IptablesArgs {
    /// Apply the rules instead of printing them; refused if Istio's capture is already there.
    #[arg(long, conflicts_with = "clean")]
    pub apply: bool,
    /// Remove the rules this command adds (and nothing else; refused if Istio's capture is there).
    #[arg(long)]
    pub clean: bool,
    /// Pod ports to capture (redirect to peerguard): `*` for all, or a comma list.
    #[arg(long, default_value = "*")]
    pub inbound_ports: String,
    /// Pod ports never captured (peerguard's own redirect, admin, health and metrics ports never
    /// are);
    /// a port may not be both listed in --inbound-ports and excluded.
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
    /// The REDIRECT target: the port of peerguard's transparent listener (`run --inbound`).
    #[arg(long, default_value = "15006")]
    pub redirect_port: u16,
    /// The old, ambiguous name of --redirect-port: refused with a message naming both meanings.
    #[arg(long = "inbound-port", hide = true)]
    pub renamed_inbound_port: Option<String>,
    /// The port of `run --admin`, never redirected.
    #[arg(long, default_value = "15000")]
    pub admin_port: u16,
    /// The port of `run --health`, never redirected: the kubelet's probes must reach it as is.
    #[arg(long, default_value = "15021")]
    pub health_port: u16,
    /// The port of `run --metrics`, never redirected: Prometheus scrapes it as is.
    #[arg(long, default_value = "15090")]
    pub metrics_port: u16,
    /// With --apply or --clean, do the same with ip6tables (the printed script serves both).
    #[arg(long)]
    pub ipv6: bool,
}

/// `500ms`, `5s`, `2m`, `1h`. A unit is required: a bare `5` could mean seconds or
/// milliseconds (Envoy and Istio mix both), and a misread timeout fails silently.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 5s, 2m, 1h"))?;
    let seconds = match unit {
        "" => {
            return Err(format!(
                "`{text}` has no unit: write {number}s, {number}ms, {number}m or {number}h"
            ))
        }
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_duration_without_a_unit_is_refused_with_the_spellings_it_could_mean() {
        assert_eq!(
            parse_duration("5"),
            Err("`5` has no unit: write 5s, 5ms, 5m or 5h".to_owned())
        );
    }
}
