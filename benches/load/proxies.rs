//! The proxies under test as child processes pinned to the proxy core, and the targets the
//! load goes to: the app direct, peerguard, HAProxy. A child is killed (by its own PID) when
//! its guard drops, on every exit path including a panic.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::host::{Watched, PROXY_CORE};
use crate::pki::{Pki, NAMESPACE};

/// Where load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKind {
    Direct,
    Peerguard,
    Haproxy,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Peerguard => "peerguard",
            TargetKind::Haproxy => "HAProxy",
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// A loopback port free right now (the proxies are told their port on the command line).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Starts `binary run` in front of `app`. Access logs are off (`PEERGUARD_LOG=warn`), as
/// HAProxy's are in its config; stderr goes to `dir/peerguard.log`.
/// `policy` replaces the built-in one (a PERMISSIVE namespace) when given.
pub fn start_peerguard(
    binary: &Path,
    policy_file: Option<&Path>,
    dir: &Path,
    pki: &Pki,
    app: SocketAddr,
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
        .args(["--admin", "127.0.0.1:0", "--health", "127.0.0.1:0", "--metrics", "none"])
        .env("PEERGUARD_LOG", "warn");
    start(command, TargetKind::Peerguard, listen, dir.join("peerguard.log"))
}

/// Whether `haproxy` can be run at all.
pub fn haproxy_available() -> bool {
    Command::new("haproxy")
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
        .env("BENCH_CERTS", &pki.haproxy_dir)
        .env("BENCH_MAXCONN", max_connections.to_string())
        // Abstract socket names are machine-wide: one per harness process.
        .env("BENCH_ABNS", format!("peerguard-load-{}", std::process::id()));
    start(command, TargetKind::Haproxy, listen, dir.join("haproxy.log"))
}

fn pinned(program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", PROXY_CORE]).arg(program);
    command
}

fn start(mut command: Command, kind: TargetKind, listen: SocketAddr, log: PathBuf) -> anyhow::Result<Proxy> {
    let log_file = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let child = command.spawn().with_context(|| format!("starting {}", kind.name()))?;
    // taskset execs the program, so the child's PID is the proxy's.
    let process = Some(Watched { pid: child.id() });
    let mut proxy = Proxy {
        child,
        target: Target {
            kind,
            addr: listen,
            process,
        },
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(listen).is_err() {
        let exited = proxy.child.try_wait()?;
        if exited.is_some() || Instant::now() > deadline {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("{} did not start listening on {listen}:\n{log_text}", kind.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proxy)
}
