//! What the operations tests drive: an echo app, the proxy in-process or as the real binary,
//! a plain HTTP/1.1 GET for the admin and health endpoints, polling with a deadline, and
//! policy and certificate files laid out the way kubelet mounts ConfigMaps and Secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use peerguard::app::Running;

use crate::support::admin::DEADLINE;
use crate::support::admin::{eventually, get};
use crate::support::proxy::{namespace_policy, start_run_line, FREE_ENDPOINTS};
use peerguard::certs::IssuedCert;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Every test's workload: `--namespace default --labels app=web`.
const WORKLOAD: [&str; 4] = ["--namespace", "default", "--labels", "app=web"];

/// An app that echoes every connection's bytes back until the client half-closes.
pub async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo app");
    let addr = listener.local_addr().expect("echo app address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// `/config_dump` as JSON.
pub async fn config_dump(admin: SocketAddr) -> Value {
    let answer = get(admin, "/config_dump").await.expect("GET /config_dump");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("config_dump is JSON")
}

/// Sends `message` and says whether it came back: what a connection that flows does.
pub async fn echoes(stream: &mut TcpStream, message: &[u8]) -> bool {
    if stream.write_all(message).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; message.len()];
    matches!(
        tokio::time::timeout(DEADLINE, stream.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == message
    )
}

/// Starts the proxy in this process; admin and health on free ports.
pub async fn start<S: AsRef<str>>(args: &[S]) -> Running {
    let mut line = run_line(&[]);
    line.extend(args.iter().map(|a| a.as_ref().to_string()));
    start_run_line(&line).await
}

/// The `run` command line of every in-process test: no transparent listener, admin and
/// health on free loopback ports, the test workload, then `args`.
fn run_line(args: &[&str]) -> Vec<String> {
    let mut line = vec!["peerguard", "run", "--inbound", "none"];
    line.extend(WORKLOAD);
    line.extend(FREE_ENDPOINTS);
    line.extend(args);
    line.into_iter().map(String::from).collect()
}

/// The namespace PERMISSIVE, and `strict_port` of the test workload STRICT.
pub fn strict_port_policy(strict_port: u16) -> String {
    namespace_policy("PERMISSIVE", false)
        + &format!(
            "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: web
  namespace: default
spec:
  selector:
    matchLabels:
      app: web
  portLevelMtls:
    {strict_port}:
      mode: STRICT
"
        )
}

/// A directory laid out as kubelet mounts a ConfigMap or Secret: each file is a symlink
/// `name -> ..data/name`, and `..data` points at a versioned directory that an update replaces
/// with one atomic rename.
pub struct KubeMount {
    dir: PathBuf,
    version: usize,
}

impl KubeMount {
    pub fn new(dir: &Path, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).expect("create mount dir");
        let mut mount = KubeMount {
            dir: dir.to_path_buf(),
            version: 0,
        };
        mount.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).expect("file symlink");
        }
        mount
    }

    /// The certificate files of `cert` in the `--cert-dir` layout.
    pub fn certificates(dir: &Path, cert: &IssuedCert) -> Self {
        Self::new(dir, &cert_files(cert))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Swaps in new contents the way kubelet does.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).expect("version dir");
        for (name, contents) in files {
            std::fs::write(self.dir.join(&version).join(name), contents).expect("write mounted file");
        }
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).expect("stage ..data");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swap ..data");
    }

    pub fn update_certificates(&mut self, cert: &IssuedCert) {
        self.update(&cert_files(cert));
    }
}

fn cert_files(cert: &IssuedCert) -> [(&'static str, &str); 3] {
    [
        ("cert-chain.pem", &cert.cert_pem),
        ("key.pem", &cert.key_pem),
        ("root-cert.pem", &cert.root_pem),
    ]
}

/// The real `peerguard` binary with `--log-format json`, its log lines parsed as they come.
pub struct Binary {
    child: Child,
    log: mpsc::UnboundedReceiver<Value>,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    /// The explicit listeners' bound addresses, in `--listen` order.
    pub listen: Vec<SocketAddr>,
}

impl Binary {
    /// Starts it with free ports and waits until it says where it serves.
    pub async fn start<S: AsRef<str>>(args: &[S]) -> Binary {
        let mut line = run_line(&["--log-format", "json"]);
        line.extend(args.iter().map(|a| a.as_ref().to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_peerguard"))
            .args(&line[1..])
            .env("PEERGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peerguard");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("peerguard (not JSON): {line}"),
                }
            }
        });
        let mut binary = Binary {
            child,
            log,
            admin: "0.0.0.0:0".parse().expect("placeholder"),
            health: "0.0.0.0:0".parse().expect("placeholder"),
            metrics: "0.0.0.0:0".parse().expect("placeholder"),
            listen: Vec::new(),
        };
        loop {
            let line = binary.next_log_line().await;
            let address = |field: &str| -> SocketAddr {
                line[field]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("{field} is an address in {line}"))
            };
            match line["message"].as_str() {
                Some("explicit listener bound") => binary.listen.push(address("listen")),
                Some("serving") => {
                    binary.admin = address("admin");
                    binary.health = address("health");
                    binary.metrics = address("metrics");
                    return binary;
                }
                _ => {}
            }
        }
    }

    /// The process's kernel pipes: its descriptors that are pipes (stderr among them).
    pub fn pipes(&self) -> usize {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).expect("the proxy's /proc/PID/fd");
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("pipe:"))
            .count()
    }

    /// The next log line, within the deadline.
    pub async fn next_log_line(&mut self) -> Value {
        match tokio::time::timeout(DEADLINE, self.log.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("peerguard closed its log (exited?)"),
            Err(_) => panic!("no log line from peerguard within {DEADLINE:?}"),
        }
    }

    /// Waits for the first log line with this message, skipping others.
    pub async fn log_line(&mut self, message: &str) -> Value {
        loop {
            let line = self.next_log_line().await;
            if line["message"] == message {
                return line;
            }
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub async fn exit_status(&mut self) -> ExitStatus {
        eventually("peerguard to exit", || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
