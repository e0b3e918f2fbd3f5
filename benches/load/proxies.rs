//! The proxies under test as child processes pinned to the proxy core, and the targets the
//! load goes to: the app direct, peerguard (access log off, text or JSON), HAProxy, nginx, and
//! the plain rustls server of the handshake ceiling. A child (with any worker processes it
//! forked) is killed by PID when its guard drops, on every exit path including a panic.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::host::{Watched, PROXY_CORE};
use crate::pki::{Pki, NAMESPACE};

/// Where load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKind {
    Direct,
    Peerguard,
    /// peerguard with its access log on, as text (the default format).
    PeerguardTextLog,
    /// peerguard with its access log on, `--log-format json`.
    PeerguardJsonLog,
    Haproxy,
    Nginx,
    /// A minimal tokio-rustls server (the harness itself, re-executed): the handshake ceiling.
    Rustls,
}

impl TargetKind {
    /// The peers an operator could pick instead of peerguard.
    pub const PEERS: [TargetKind; 2] = [TargetKind::Haproxy, TargetKind::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Peerguard => "peerguard",
            TargetKind::PeerguardTextLog => "peerguard-text-log",
            TargetKind::PeerguardJsonLog => "peerguard-json-log",
            TargetKind::Haproxy => "HAProxy",
            TargetKind::Nginx => "nginx",
            TargetKind::Rustls => "rustls",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub kind: TargetKind,
    pub addr: SocketAddr,
    /// The proxy process; `None` for the app itself.
    pub process: Option<Watched>,
}

/// A running child process, killed and reaped on drop.
pub struct Proxy {
    child: Child,
    pub target: Target,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The workers first named, then the parent killed (so it respawns none), then them.
        let workers = Watched::proxy(self.child.id()).descendants();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// How long a proxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The PERMISSIVE namespace policy: plaintext and the app's own TLS pass through, mesh mTLS
/// is terminated, as on the peers' single frontend.
const POLICY: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bench}
spec: {mtls: {mode: PERMISSIVE}}
";

/// The HAProxy configuration the repository carries (same as /work/shared/bench/peers).
const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/load/haproxy.cfg");
/// The nginx configuration template (same as /work/shared/bench/peers/nginx.conf.in).
const NGINX_CONF: &str = include_str!("nginx.conf.in");

/// A loopback port free right now (the proxies are told their port on the command line).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// peerguard's access log in a run: off (`PEERGUARD_LOG=warn`, as the peers' logs are off in
/// their configs), or on at the default level in either format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

impl AccessLog {
    fn kind(self) -> TargetKind {
        match self {
            AccessLog::Off => TargetKind::Peerguard,
            AccessLog::Text => TargetKind::PeerguardTextLog,
            AccessLog::Json => TargetKind::PeerguardJsonLog,
        }
    }
}

/// Starts `binary run` in front of `app`, its stderr (where the access log goes) written to a
/// file in `dir`, as a container runtime ships a sidecar's stderr to a file.
/// `policy` replaces the built-in one (a PERMISSIVE namespace) when given.
pub fn start_peerguard(
    binary: &Path,
    policy_file: Option<&Path>,
    dir: &Path,
    pki: &Pki,
    app: SocketAddr,
    log: AccessLog,
) -> anyhow::Result<Proxy> {
    anyhow::ensure!(
        binary.is_file(),
        "{} not found: run `cargo build --release` first (or pass --peerguard PATH)",
        binary.display()
    );
    let policy = dir.join("policy.yaml");
    match policy_file {
        Some(file) => std::fs::copy(file, &policy).map(drop)?,
        None => std::fs::write(&policy, POLICY)?,
    }
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut command = pinned(binary);
    command
        .arg("run")
        .args(["--inbound", "none", "--listen", &format!("{listen}={app}")])
        .arg("--cert-dir")
        .arg(&pki.proxy_cert_dir)
        .arg("--policy")
        .arg(&policy)
        .args(["--namespace", NAMESPACE, "--labels", "app=bench"])
        .args(["--admin", "127.0.0.1:0", "--health", "127.0.0.1:0", "--metrics", "none"]);
    match log {
        AccessLog::Off => command.env("PEERGUARD_LOG", "warn"),
        AccessLog::Text => command.env_remove("PEERGUARD_LOG"),
        AccessLog::Json => command.env_remove("PEERGUARD_LOG").args(["--log-format", "json"]),
    };
    let kind = log.kind();
    start(command, kind, listen, dir.join(format!("{}.log", kind.name())), 0)
}

/// Whether `program -v` runs at all (HAProxy and nginx).
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts HAProxy with `benches/load/haproxy.cfg`; `max_connections` must cover the idle phases
/// (an mTLS connection counts twice: outer frontend and terminating frontend).
pub fn start_haproxy(dir: &Path, pki: &Pki, app: SocketAddr, max_connections: usize) -> anyhow::Result<Proxy> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut command = pinned(Path::new("haproxy"));
    command
        .args(["-db", "-f", HAPROXY_CFG])
        .env("BENCH_LISTEN", listen.to_string())
        .env("BENCH_APP", app.to_string())
        .env("BENCH_CERTS", &pki.peer_cert_dir)
        .env("BENCH_MAXCONN", max_connections.to_string())
        // Abstract socket names are machine-wide: one per harness process.
        .env("BENCH_ABNS", format!("peerguard-load-{}", std::process::id()));
    start(command, TargetKind::Haproxy, listen, dir.join("haproxy.log"), 0)
}

/// nginx starts made by this harness, so each gets a fresh directory (its unix socket and pid
/// file from a killed run stay behind).
static NGINX_STARTS: AtomicUsize = AtomicUsize::new(0);

/// Starts nginx (master and one worker) with `benches/load/nginx.conf.in` rendered into a
/// directory of its own; `max_connections` as for HAProxy (nginx counts an mTLS connection four
/// times: client, unix-socket loop both ends, app).
pub fn start_nginx(dir: &Path, pki: &Pki, app: SocketAddr, max_connections: usize) -> anyhow::Result<Proxy> {
    let run = dir.join(format!("nginx-{}", NGINX_STARTS.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&run)?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let connections = (2 * max_connections).to_string();
    let conf = NGINX_CONF
        .replace("@RUN@", &run.to_string_lossy())
        .replace("@LISTEN@", &listen.to_string())
        .replace("@APP@", &app.to_string())
        .replace("@CERTS@", &pki.peer_cert_dir.to_string_lossy())
        .replace("@WORKER_CONNS@", &connections)
        .replace("@NOFILE@", &connections);
    let conf_path = run.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut command = pinned(Path::new("nginx"));
    command
        .arg("-p")
        .arg(&run)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(run.join("nginx-error.log"));
    start(command, TargetKind::Nginx, listen, run.join("nginx.log"), 1)
}

/// Starts the handshake ceiling: this harness binary again, as a plain tokio-rustls server
/// with the proxy's credentials (`crate::rustls_server`).
pub fn start_rustls_server(dir: &Path, pki: &Pki) -> anyhow::Result<Proxy> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut command = pinned(&std::env::current_exe()?);
    command
        .arg("--rustls-server")
        .arg(listen.to_string())
        .arg("--rustls-cert-dir")
        .arg(&pki.proxy_cert_dir);
    start(command, TargetKind::Rustls, listen, dir.join("rustls.log"), 0)
}

fn pinned(program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", PROXY_CORE]).arg(program);
    command
}

/// Spawns `command` and waits until its socket listens and `workers` worker processes exist.
/// Readiness is read from /proc, not probed with a connection: the start-up RSS is taken
/// before any connection.
fn start(
    mut command: Command,
    kind: TargetKind,
    listen: SocketAddr,
    log: PathBuf,
    workers: usize,
) -> anyhow::Result<Proxy> {
    let log_file = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let child = command.spawn().with_context(|| format!("starting {}", kind.name()))?;
    // taskset execs the program, so the child's PID is the proxy's.
    let process = Watched::proxy(child.id());
    let mut proxy = Proxy {
        child,
        target: Target {
            kind,
            addr: listen,
            process: Some(process),
        },
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while !crate::host::listening(listen)? || process.descendants().len() < workers {
        let exited = proxy.child.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("{} did not start listening on {listen}:\n{log_text}", kind.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proxy)
}
