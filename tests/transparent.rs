//! The transparent mode end to end, as it runs in a pod. A "pod" network namespace holds a real
//! app (this test binary re-run, serving plaintext and its own TLS from a non-mesh CA on every
//! port), `peerguard run --inbound` (no `--listen`) and the capture installed by `peerguard
//! iptables --apply`. A "client" namespace reaches the pod over a veth pair with real clients:
//! curl, `openssl s_client` and a rustls client. Each case checks what the client got, what
//! the app saw (or that it saw nothing), and the one access-log record peerguard wrote.
//!
//! Needs root, iproute2, iptables, curl and openssl (CI runs as root and `scripts/test`
//! installs them): without them these tests fail loudly.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use peerguard::certs::IssuedCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use support::netns::{self, join, poll, LinkEnd, Netns, Process};
use support::pki::{server_name, Pki, VALIDITY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

const PEERGUARD: &str = env!("CARGO_BIN_EXE_peerguard");

const POD_V4: &str = "10.251.0.1";
const CLIENT_V4: &str = "10.251.0.2";
const POD_V6: &str = "fd00:251::1";
const CLIENT_V6: &str = "fd00:251::2";

/// The app's ports and the mode the policy gives each.
const PERMISSIVE: u16 = 8080;
const PERMISSIVE_APP_TLS: u16 = 8443;
const STRICT: u16 = 9090;
const DISABLE: u16 = 7070;
const INBOUND_PORT: u16 = 15006;

/// The workload policy: PERMISSIVE, with one port STRICT and one DISABLE.
const POLICY: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: echo
  namespace: default
spec:
  selector:
    matchLabels:
      app: echo
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9090:
      mode: STRICT
    7070:
      mode: DISABLE
";

/// How long any one step (a process getting ready, a client call, a log line) may take.
const STEP: Duration = Duration::from_secs(20);
/// Every HTTP request a client sends.
const GET: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// The pod and its client, with everything running. Fields drop in order: the processes are
/// stopped before their namespaces are deleted.
struct Pod {
    peerguard: Process,
    app: Process,
    client: Netns,
    /// Held for its drop, which deletes the namespace; everything in it is started above.
    _pod: Netns,
    pki: Pki,
    mesh_client: IssuedCert,
    mesh_client_dir: PathBuf,
    app_ca: PathBuf,
}

impl Pod {
    /// Namespaces, capture, app and peerguard (`run --inbound INBOUND --app-host APP_HOST`),
    /// returned once peerguard accepts connections.
    fn start(tag: &str, inbound: &str, app_host: &str) -> Self {
        let pki = Pki::new();
        let app_cert = pki
            .foreign
            .issue_server(&[POD_V4, POD_V6], VALIDITY)
            .expect("the app's own certificate");
        let app_dir = pki.write("app", &app_cert);
        let workload_dir = pki.write("workload", &pki.server);
        let mesh_client = pki.mesh_client();
        let mesh_client_dir = pki.write("client", &mesh_client);
        let policy = pki.dir.path().join("policy.yaml");
        std::fs::write(&policy, POLICY).expect("write the policy");

        let pod = Netns::new(&format!("{tag}p"));
        let client = Netns::new(&format!("{tag}c"));
        join(
            LinkEnd {
                netns: &pod,
                link: "eth0",
                v4: POD_V4,
                v6: POD_V6,
            },
            LinkEnd {
                netns: &client,
                link: "eth0",
                v4: CLIENT_V4,
                v6: CLIENT_V6,
            },
        );
        pod.ok(PEERGUARD, &["iptables", "--apply", "--ipv6"]);

        let mut app = pod.spawn_role(&this_test(), "app", &app_dir.to_string_lossy());
        app.line_after("APP READY", STEP);
        let peerguard = pod.spawn(
            PEERGUARD,
            &[
                "run",
                "--inbound",
                inbound,
                "--app-host",
                app_host,
                "--admin",
                "127.0.0.1:15000",
                "--health",
                "0.0.0.0:15021",
                "--namespace",
                "default",
                "--labels",
                "app=echo",
                "--policy",
                &policy.to_string_lossy(),
                "--cert-dir",
                &workload_dir.to_string_lossy(),
                "--log-format",
                "json",
            ],
        );
        let mut pod = Pod {
            peerguard,
            app,
            client,
            _pod: pod,
            app_ca: app_dir.join("root-cert.pem"),
            pki,
            mesh_client,
            mesh_client_dir,
        };
        pod.wait_until_peerguard_accepts();
        pod
    }

    /// Poll the inbound port itself until peerguard accepts there (before it listens, the
    /// kernel refuses and curl exits 7). Port 15006 is excluded from the redirect, so the one
    /// accepted call is a direct call to peerguard's own port: it must be refused as `own_port`.
    fn wait_until_peerguard_accepts(&mut self) {
        let url = format!("http://{POD_V4}:{INBOUND_PORT}/");
        let accepted = poll("peerguard's inbound listener", 100, Duration::from_millis(100), || {
            let output = self.curl(&[&url]);
            (output.status.code() != Some(7)).then_some(output)
        });
        assert!(
            !accepted.status.success() && accepted.stdout.is_empty(),
            "a direct call to the inbound port got an answer: {}",
            client_got(&accepted)
        );
        let record = self.record();
        assert_record(&record, INBOUND_PORT, "-", "own_port");
        assert_eq!(record["action"], "refuse");
    }

    /// `curl -sS --max-time 10 ARGS` from the client namespace.
    fn curl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-sS", "--max-time", "10"];
        all.extend_from_slice(args);
        self.client.exec("curl", &all)
    }

    /// An HTTP request over `openssl s_client` from the client namespace, offering `alpn` and
    /// the mesh client certificate, verifying the server against `ca` (failing if it does not).
    fn openssl(&self, port: u16, alpn: &str, ca: &Path) -> Output {
        let file = |name: &str| self.mesh_client_dir.join(name).to_string_lossy().into_owned();
        let mut command = self.client.command("timeout");
        command
            .args(["20", "openssl", "s_client", "-quiet", "-verify_return_error"])
            .args(["-connect", &format!("{POD_V4}:{port}"), "-alpn", alpn])
            .args(["-cert", &file("cert-chain.pem"), "-key", &file("key.pem")])
            .args(["-CAfile", &ca.to_string_lossy()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("openssl runs");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(GET)
            .expect("write the request");
        child.wait_with_output().expect("openssl finishes")
    }

    /// An HTTP request from a rustls mesh client offering `alpn`, over a socket in the client
    /// namespace (a relay role there joins a Unix socket, which namespaces do not separate, to
    /// a TCP connection to `target`).
    fn rustls_get(&self, target: &str, alpn: &[&str]) -> RustlsAnswer {
        let socket = self.pki.dir.path().join("relay.sock");
        let mut relay = self
            .client
            .spawn_role(&this_test(), "relay", &format!("{} {target}", socket.display()));
        relay.line_after("RELAY READY", STEP);
        let stream = UnixStream::connect(&socket).expect("connect to the relay");
        stream.set_read_timeout(Some(STEP)).expect("read timeout");
        let config = self.pki.client_config(alpn, Some(&self.mesh_client));
        let connection = rustls::ClientConnection::new(config, server_name()).expect("a rustls client");
        let mut tls = rustls::StreamOwned::new(connection, stream);
        tls.write_all(GET).expect("the handshake and the request succeed");
        let mut response = Vec::new();
        // Whatever was read stays in `response` even if the end is not a clean close_notify;
        // the caller checks the answer itself.
        let _ = tls.read_to_end(&mut response);
        RustlsAnswer {
            alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
            server_cert: tls.conn.peer_certificates().and_then(|certs| certs.first().cloned()),
            response: String::from_utf8_lossy(&response).into_owned(),
        }
    }

    /// The next access-log record peerguard wrote (one per connection, when it ends).
    fn record(&mut self) -> Value {
        loop {
            let line = self
                .peerguard
                .next_line(STEP)
                .expect("peerguard writes an access-log record in time");
            if let Ok(record) = serde_json::from_str::<Value>(&line) {
                if record["target"] == "peerguard::access" {
                    return record;
                }
            }
        }
    }

    /// The app answered this call: the client got `expected`, and that is what the app says
    /// of the next connection it served (so no connection refused earlier reached it).
    fn assert_app_answered(&mut self, client_got: &str, expected: &str) {
        assert!(
            client_got.contains(expected),
            "expected {expected:?}, the client got {client_got:?}"
        );
        assert_eq!(
            self.app.line_after("APP SAW ", STEP),
            expected,
            "the app's next connection"
        );
    }
}

/// What a rustls client saw of a request through peerguard.
struct RustlsAnswer {
    alpn: Option<Vec<u8>>,
    server_cert: Option<CertificateDer<'static>>,
    response: String,
}

fn assert_record(record: &Value, port: u16, mode: &str, reason: &str) {
    assert_eq!(
        (
            record["port"].as_u64(),
            record["mode"].as_str(),
            record["reason"].as_str()
        ),
        (Some(u64::from(port)), Some(mode), Some(reason)),
        "access-log record {record}"
    );
}

/// What a client process printed: stdout, then stderr (for the failure message).
fn client_got(output: &Output) -> String {
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    )
}

/// The answer the app sends when reached on `port` over `over` from `from`.
fn app_answer(port: u16, over: &str, from: &str) -> String {
    format!("port={port} over={over} from={from}")
}

/// libtest names each test's thread after the test; a role child re-runs exactly this test.
fn this_test() -> String {
    std::thread::current()
        .name()
        .expect("tests run on a thread named after them")
        .to_owned()
}

#[test]
fn plaintext_passes_through_a_permissive_port() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("plain", "0.0.0.0:15006", "127.0.0.1");
    let output = pod.curl(&[&format!("http://{POD_V4}:{PERMISSIVE}/")]);
    pod.assert_app_answered(&client_got(&output), &app_answer(PERMISSIVE, "plaintext", "127.0.0.1"));
    let record = pod.record();
    assert_record(&record, PERMISSIVE, "PERMISSIVE", "passthrough_plaintext");
    assert_eq!(source_ip(&record), CLIENT_V4);
}

#[test]
fn mesh_mtls_with_istio_alpn_is_terminated_and_the_app_gets_plaintext() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("mtls", "0.0.0.0:15006", "127.0.0.1");
    let mesh_root = pod.mesh_client_dir.join("root-cert.pem");

    // openssl verifies peerguard's certificate against the mesh root and presents the mesh
    // client certificate.
    let output = pod.openssl(PERMISSIVE, "istio", &mesh_root);
    let expected = app_answer(PERMISSIVE, "plaintext", "127.0.0.1");
    pod.assert_app_answered(&client_got(&output), &expected);
    let record = pod.record();
    assert_record(&record, PERMISSIVE, "PERMISSIVE", "mtls");
    assert_eq!(record["peer"], "spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(record["alpn"], "istio");

    // rustls: only the istio marker offered, so no ALPN is negotiated, and the certificate
    // that answers is the mesh workload certificate itself.
    let answer = pod.rustls_get(&format!("{POD_V4}:{PERMISSIVE}"), &["istio"]);
    assert_eq!(answer.alpn, None);
    assert_eq!(answer.server_cert.as_ref(), Some(&pod.pki.server.cert_der));
    pod.assert_app_answered(&answer.response, &expected);
    let record = pod.record();
    assert_record(&record, PERMISSIVE, "PERMISSIVE", "mtls");
    assert_eq!(record["negotiated_alpn"], "-");
}

#[test]
fn the_apps_own_tls_passes_through_untouched() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("apptls", "0.0.0.0:15006", "127.0.0.1");
    // Verification against the app's CA (not the mesh's) succeeds: the app's certificate answered.
    let output = pod.curl(&[
        "--cacert",
        &pod.app_ca.to_string_lossy(),
        &format!("https://{POD_V4}:{PERMISSIVE_APP_TLS}/"),
    ]);
    pod.assert_app_answered(
        &client_got(&output),
        &app_answer(PERMISSIVE_APP_TLS, "tls", "127.0.0.1"),
    );
    assert_record(&pod.record(), PERMISSIVE_APP_TLS, "PERMISSIVE", "passthrough_tls");
}

#[test]
fn strict_refuses_plaintext_before_it_reaches_the_app() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("strict", "0.0.0.0:15006", "127.0.0.1");
    let output = pod.curl(&[&format!("http://{POD_V4}:{STRICT}/")]);
    assert_eq!(output.status.code(), Some(56), "{output:?}");
    assert_record(&pod.record(), STRICT, "STRICT", "plaintext_on_strict");
    the_next_connection_the_app_sees_is_a_new_one(&mut pod);
}

#[test]
fn disable_passes_even_mesh_mtls_through_to_the_apps_own_tls() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("disable", "0.0.0.0:15006", "127.0.0.1");
    // The handshake offers istio ALPNs (as an istio client does, with http/1.1 after them) and
    // a mesh client certificate, yet it verifies against the app's CA: the app's own
    // certificate answered, peerguard stayed out of the way.
    let app_ca = pod.app_ca.clone();
    let output = pod.openssl(DISABLE, "istio-http/1.1,istio,http/1.1", &app_ca);
    pod.assert_app_answered(&client_got(&output), &app_answer(DISABLE, "tls", "127.0.0.1"));
    let record = pod.record();
    assert_record(&record, DISABLE, "DISABLE", "passthrough_disabled");
    assert_eq!(record["peer"], "-");
}

#[test]
fn a_direct_call_to_the_inbound_port_never_reaches_the_app() {
    if played_role() {
        return;
    }
    // Starting the pod already made one direct call to 15006 and saw it refused as `own_port`.
    let mut pod = Pod::start("own", "0.0.0.0:15006", "127.0.0.1");
    the_next_connection_the_app_sees_is_a_new_one(&mut pod);
}

#[test]
fn prometheus_scrapes_the_metrics_port_from_another_namespace_while_admin_stays_unreachable() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("metr", "0.0.0.0:15006", "127.0.0.1");
    let output = pod.curl(&[&format!("http://{POD_V4}:{PERMISSIVE}/")]);
    pod.assert_app_answered(&client_got(&output), &app_answer(PERMISSIVE, "plaintext", "127.0.0.1"));
    pod.record();

    let scrape = pod.curl(&[&format!("http://{POD_V4}:15090/stats/prometheus")]);
    assert!(scrape.status.success(), "{scrape:?}");
    let body = String::from_utf8_lossy(&scrape.stdout);
    let counted = format!(
        "peerguard_connections_total{{port=\"{PERMISSIVE}\",mode=\"PERMISSIVE\",action=\"passthrough\",reason=\"passthrough_plaintext\"}} 1"
    );
    assert!(body.contains(&counted), "{body}");

    // The metrics port serves the scrape and nothing else.
    let other = pod.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{POD_V4}:15090/config_dump"),
    ]);
    assert_eq!(String::from_utf8_lossy(&other.stdout), "404");
    // The admin endpoint listens on loopback only: from outside the pod nothing answers.
    let admin = pod.curl(&[&format!("http://{POD_V4}:15000/config_dump")]);
    assert_eq!(admin.status.code(), Some(7), "curl: connection refused; {admin:?}");
}

/// After a refused connection: a fresh plaintext call is the app's next connection, so the
/// refused one never reached it.
fn the_next_connection_the_app_sees_is_a_new_one(pod: &mut Pod) {
    let output = pod.curl(&[&format!("http://{POD_V4}:{PERMISSIVE}/")]);
    pod.assert_app_answered(&client_got(&output), &app_answer(PERMISSIVE, "plaintext", "127.0.0.1"));
    assert_record(&pod.record(), PERMISSIVE, "PERMISSIVE", "passthrough_plaintext");
}

#[test]
fn app_host_original_reaches_the_app_at_the_pod_ip_over_ipv4_and_ipv6_without_looping() {
    if played_role() {
        return;
    }
    let mut pod = Pod::start("orig", "[::]:15006", "original");
    // IPv4: from 127.0.0.6 (istio's passthrough source). IPv6: unbound, so from the pod IP.
    // Had peerguard's own upstream connection been captured again, the app would never answer
    // and more records would follow; each call yields exactly the app's answer and one record,
    // whose source is the client: nothing is NATed on the way in but the destination port.
    for (url, from, client) in [
        (format!("http://{POD_V4}:{PERMISSIVE}/"), "127.0.0.6", CLIENT_V4),
        (format!("http://[{POD_V6}]:{PERMISSIVE}/"), POD_V6, CLIENT_V6),
    ] {
        let output = pod.curl(&["-g", &url]);
        pod.assert_app_answered(&client_got(&output), &app_answer(PERMISSIVE, "plaintext", from));
        let record = pod.record();
        assert_record(&record, PERMISSIVE, "PERMISSIVE", "passthrough_plaintext");
        assert_eq!(source_ip(&record), client);
    }
}

/// The client address of a record, IPv4-mapped addresses (of a dual-stack listener) unmapped.
fn source_ip(record: &Value) -> String {
    let source: SocketAddr = record["source"]
        .as_str()
        .expect("a source")
        .parse()
        .expect("an address");
    source.ip().to_canonical().to_string()
}

// ---- Roles: what the re-run test binary does inside a namespace ----

/// In a child started by `spawn_role`, play the app or the relay and return true.
fn played_role() -> bool {
    netns::played_role(|role, arg| async move {
        match role.as_str() {
            "app" => app(Path::new(&arg)).await,
            "relay" => {
                let (socket, target) = arg.split_once(' ').expect("a socket path and a target");
                relay(Path::new(socket), target.parse().expect("a target address")).await;
            }
            other => panic!("unknown role {other}"),
        }
    })
}

/// App role: on every app port, plaintext and its own TLS (the certificate in `cert_dir`, from
/// a non-mesh CA). Each request is answered, and reported on stdout, with how it arrived.
/// Runs until the test kills it.
async fn app(cert_dir: &Path) {
    let acceptor = TlsAcceptor::from(app_tls(cert_dir));
    let mut listeners = Vec::new();
    for port in [PERMISSIVE, PERMISSIVE_APP_TLS, STRICT, DISABLE] {
        let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        listeners.push(peerguard::net::bind_listener(addr).expect("the app binds its port"));
    }
    println!("APP READY");
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, acceptor.clone()));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One app connection: TLS if the first byte is a handshake record, plaintext otherwise.
async fn answer(stream: TcpStream, acceptor: TlsAcceptor) {
    let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    let mut first = [0u8; 1];
    if !matches!(stream.peek(&mut first).await, Ok(1)) {
        return;
    }
    let from = peer.ip().to_canonical().to_string();
    if first[0] == 22 {
        if let Ok(tls) = acceptor.accept(stream).await {
            respond(tls, app_answer(local.port(), "tls", &from)).await;
        }
    } else {
        respond(stream, app_answer(local.port(), "plaintext", &from)).await;
    }
}

/// Read the request head, answer `how` in an HTTP/1.0 response, report it, close.
async fn respond<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S, how: String) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let body = format!("{how}\n");
    let response = format!(
        "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    println!("APP SAW {how}");
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}

fn app_tls(cert_dir: &Path) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert_dir.join("cert-chain.pem"))
        .expect("the app's certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(cert_dir.join("key.pem")).expect("the app's key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the app's TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Relay role: one connection from the Unix `socket` joined to a TCP connection to `target`,
/// bytes copied both ways until both ends close (or a step's time runs out).
async fn relay(socket: &Path, target: SocketAddr) {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the relay socket");
    println!("RELAY READY");
    let (mut local, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("the test connects in time")
        .expect("accept");
    let mut remote = TcpStream::connect(target).await.expect("connect to the pod");
    let _ = tokio::time::timeout(STEP, tokio::io::copy_bidirectional(&mut local, &mut remote)).await;
}
