//! Who may connect, enforced on live traffic (docs/authorization.md): the real binary in front
//! of an echo app on a STRICT, a PERMISSIVE and a DISABLE port, with AuthorizationPolicies;
//! mTLS peers with their own certificates, plaintext clients from different 127.0.0.x
//! addresses, and the app's own TLS with different SNIs. Each connection's access-log record
//! names the verdict and the deciding policy; a denied one never reaches the app; the metrics
//! count it; a reload from allow to deny changes the next connection and not an open one.

#[path = "operations/harness.rs"]
#[allow(dead_code)] // the operations tests' harness; this file uses the binary and mounts
mod harness;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use harness::{Binary, KubeMount};
use peerguard::certs::IssuedCert;
use serde_json::Value;
use support::admin::{get, sample};
use support::pki::{mesh_id, server_name, Pki, TestDir, VALIDITY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// An echo app that counts the connections it accepts: a denied client must add none.
struct CountingApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl CountingApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        CountingApp { addr, accepted }
    }
}

/// The namespace PERMISSIVE, one port STRICT and one DISABLE; then who may connect: the `sleep`
/// service account is denied everywhere; `client` may reach any port over mTLS; plaintext may
/// come from 127.0.0.2 only; the app's own TLS only with SNI `app.example`; and a dry-run DENY
/// of `client` on the DISABLE port, watched before it is enforced.
fn policy(strict: u16, disable: u16, allow_client: bool) -> String {
    let client_rule = if allow_client {
        "  - from:\n    - source:\n        principals: [cluster.local/ns/default/sa/client]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: web, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  portLevelMtls:
    {strict}: {{mode: STRICT}}
    {disable}: {{mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-sleep, namespace: default}}
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: web, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
{client_rule}  - from:
    - source:
        ipBlocks: [127.0.0.2/32]
  - when:
    - key: connection.sni
      values: [app.example]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: try-deny-client
  namespace: default
  annotations: {{istio.io/dry-run: \"true\"}}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"{disable}\"]
"
    )
}

struct Setup {
    pki: Pki,
    strict: CountingApp,
    permissive: CountingApp,
    disable: CountingApp,
    policy: KubeMount,
    proxy: Binary,
    _dir: TestDir,
}

impl Setup {
    async fn start(label: &str) -> Self {
        let pki = Pki::new();
        let dir = TestDir::new(label);
        let (strict, permissive, disable) = (
            CountingApp::start().await,
            CountingApp::start().await,
            CountingApp::start().await,
        );
        let text = policy(strict.addr.port(), disable.addr.port(), true);
        let policy = KubeMount::new(&dir.path().join("policy"), &[("policy.yaml", &text)]);
        let cert_dir = pki.write("server", &pki.server).display().to_string();
        let listen = |app: &CountingApp| format!("127.0.0.1:0={}", app.addr);
        let args = [
            "--cert-dir".to_string(),
            cert_dir,
            "--policy".into(),
            policy.path().display().to_string(),
            "--listen".into(),
            listen(&strict),
            "--listen".into(),
            listen(&permissive),
            "--listen".into(),
            listen(&disable),
        ];
        let proxy = Binary::start(&args).await;
        Setup {
            pki,
            strict,
            permissive,
            disable,
            policy,
            proxy,
            _dir: dir,
        }
    }

    /// The proxy's listener in front of `app`.
    fn listener(&self, app: &CountingApp) -> SocketAddr {
        let index = [&self.strict, &self.permissive, &self.disable]
            .iter()
            .position(|a| a.addr == app.addr)
            .unwrap();
        self.proxy.listen[index]
    }

    /// The proxy's listener in front of `app`, and the app's accept count.
    fn target(&self, app: &CountingApp) -> (SocketAddr, Arc<AtomicUsize>) {
        (self.listener(app), app.accepted.clone())
    }

    fn peer(&self, service_account: &str) -> IssuedCert {
        self.pki
            .mesh
            .issue_workload(&mesh_id(service_account), VALIDITY)
            .unwrap()
    }

    /// The next access-log record.
    async fn record(&mut self) -> Value {
        loop {
            let line = self.proxy.log_line("connection").await;
            if line["target"] == "peerguard::access" {
                return line;
            }
        }
    }
}

/// A TCP connection from `source` (a 127.0.0.x address) to `to`; `None` when the proxy reset
/// it so soon that `connect` itself saw the reset (a DISABLE port denies at accept, and the
/// RST can overtake the client's check of its own connect).
async fn connect_from(source: [u8; 4], to: SocketAddr) -> Option<TcpStream> {
    // Binding port 0 picks the source port before the destination is known, so the kernel can
    // pick one whose 4-tuple to `to` is still in TIME_WAIT from an earlier test, and connect
    // then fails with EADDRNOTAVAIL; another port does not.
    let mut last_error = None;
    for _ in 0..5 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::from(source), 0)).unwrap();
        match socket.connect(to).await {
            Ok(stream) => return Some(stream),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last_error = Some(e),
            Err(e) => panic!("connecting from {source:?} to {to}: {e}"),
        }
    }
    panic!("connecting from {source:?} to {to}: {last_error:?}")
}

/// Whether `message` sent from `source` comes back from `to` (false when the proxy reset it).
async fn echoes_from(source: [u8; 4], to: SocketAddr, message: &[u8]) -> bool {
    match connect_from(source, to).await {
        Some(mut stream) => echoes(&mut stream, message).await,
        None => false,
    }
}

/// Whether `message` comes back over `stream` (false when the proxy reset it).
async fn echoes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> bool {
    if stream.write_all(message).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; message.len()];
    matches!(
        tokio::time::timeout(support::admin::DEADLINE, stream.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == message
    )
}

/// An mTLS round trip as `peer` (ALPN `istio`); false when refused.
async fn mesh_round_trip(setup: &Setup, to: SocketAddr, peer: &IssuedCert) -> bool {
    let tcp = TcpStream::connect(to).await.unwrap();
    let config = setup.pki.client_config(&["istio"], Some(peer));
    match TlsConnector::from(config).connect(server_name(), tcp).await {
        Ok(mut tls) => echoes(&mut tls, b"mesh hello").await,
        Err(_) => false,
    }
}

/// The app's own TLS (no mesh ALPN, so passed through) with `sni`, from `source`: true when the
/// ClientHello reached the app (the echo app sends it back, which is not a ServerHello).
async fn app_tls_reaches_the_app(to: SocketAddr, source: [u8; 4], sni: &str) -> bool {
    echoes_from(source, to, &client_hello(sni)).await
}

/// A real rustls ClientHello for `sni`, offering `h2`: the app's own TLS, as far as the proxy
/// can tell.
fn client_hello(sni: &str) -> Vec<u8> {
    let mut config = (*support::clients::client_config(&[], None)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

fn assert_verdict(record: &Value, reason: &str, authz: &str, policy: &str) {
    assert_eq!(
        (
            record["reason"].as_str(),
            record["authz"].as_str(),
            record["authz_policy"].as_str()
        ),
        (Some(reason), Some(authz), Some(policy)),
        "{record}"
    );
}

#[tokio::test]
async fn mesh_peers_are_allowed_or_denied_by_identity_on_strict_and_permissive_ports() {
    let mut setup = Setup::start("authz-mesh").await;
    let (client, sleep, stranger) = (setup.peer("client"), setup.peer("sleep"), setup.peer("stranger"));
    let targets = [
        ("strict", setup.target(&setup.strict)),
        ("permissive", setup.target(&setup.permissive)),
    ];
    for (port, (to, accepted)) in targets {
        let before = accepted.load(Ordering::SeqCst);
        assert!(mesh_round_trip(&setup, to, &client).await, "{port}: client is allowed");
        assert_verdict(&setup.record().await, "mtls", "allow", "default/web#0");

        assert!(!mesh_round_trip(&setup, to, &sleep).await, "{port}: sleep is denied");
        let record = setup.record().await;
        assert_verdict(&record, "denied_by_policy", "deny", "default/deny-sleep#0");
        assert_eq!(record["peer"], mesh_id("sleep").to_string());

        assert!(
            !mesh_round_trip(&setup, to, &stranger).await,
            "{port}: no ALLOW rule admits it"
        );
        let record = setup.record().await;
        assert_verdict(&record, "denied_by_policy", "deny", "-");
        assert_eq!(record["authz_reason"], "no_allow_matched");

        assert_eq!(
            accepted.load(Ordering::SeqCst),
            before + 1,
            "{port}: only the allowed peer reached the app"
        );
    }
    let scrape = get(setup.proxy.admin, "/stats/prometheus").await.unwrap().body;
    let denied = r#"peerguard_authorizations_total{decision="deny",policy="default/deny-sleep"}"#;
    assert_eq!(sample(&scrape, denied), Some(2.0), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            r#"peerguard_authorizations_total{decision="allow",policy="default/web"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn plaintext_and_the_apps_own_tls_are_judged_by_address_and_sni_on_every_port() {
    let mut setup = Setup::start("authz-plain").await;
    // Plaintext: allowed from 127.0.0.2 (rule 1), denied from 127.0.0.4, on PERMISSIVE and DISABLE.
    for (to, accepted) in [setup.target(&setup.permissive), setup.target(&setup.disable)] {
        let before = accepted.load(Ordering::SeqCst);
        assert!(echoes_from([127, 0, 0, 2], to, b"from .2").await);
        let record = setup.record().await;
        assert_verdict(&record, record["reason"].as_str().unwrap(), "allow", "default/web#1");
        assert!(!echoes_from([127, 0, 0, 4], to, b"from .4").await);
        let record = setup.record().await;
        assert_verdict(&record, "denied_by_policy", "deny", "-");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            before + 1,
            "the denied client never reached the app"
        );
    }
    // A DISABLE port is judged at accept: the dry-run DENY says what it would do, not enforced.
    let to = setup.listener(&setup.disable);
    assert!(echoes_from([127, 0, 0, 2], to, b"again").await);
    let record = setup.record().await;
    assert_eq!(record["reason"], "passthrough_disabled");
    assert_eq!(record["authz_dry_run"], "deny:default/try-deny-client#0", "{record}");

    // The app's own TLS, passed through on PERMISSIVE: the SNI decides (rule 2).
    let to = setup.listener(&setup.permissive);
    assert!(app_tls_reaches_the_app(to, [127, 0, 0, 4], "app.example").await);
    assert_verdict(&setup.record().await, "passthrough_tls", "allow", "default/web#2");
    assert!(!app_tls_reaches_the_app(to, [127, 0, 0, 4], "other.example").await);
    assert_verdict(&setup.record().await, "denied_by_policy", "deny", "-");

    // Every connection to the DISABLE port, allowed or denied, met the dry-run DENY.
    let scrape = get(setup.proxy.admin, "/stats/prometheus").await.unwrap().body;
    assert_eq!(
        sample(
            &scrape,
            r#"peerguard_authorizations_total{decision="shadow_deny",policy="default/try-deny-client"}"#
        ),
        Some(3.0),
        "{scrape}"
    );
}

#[tokio::test]
async fn a_reload_from_allow_to_deny_refuses_the_next_connection_and_spares_the_open_one() {
    let mut setup = Setup::start("authz-reload").await;
    let client = setup.peer("client");
    let to = setup.listener(&setup.permissive);
    let tcp = TcpStream::connect(to).await.unwrap();
    let config = setup.pki.client_config(&["istio"], Some(&client));
    let mut open = TlsConnector::from(config).connect(server_name(), tcp).await.unwrap();
    assert!(echoes(&mut open, b"before the reload").await);

    let denying = policy(setup.strict.addr.port(), setup.disable.addr.port(), false);
    setup.policy.update(&[("policy.yaml", &denying)]);
    support::admin::eventually("the reload to take effect", || async {
        let dump: Value = serde_json::from_str(&get(setup.proxy.admin, "/config_dump").await.ok()?.body).ok()?;
        (dump["policy"]["generation"] == 2).then_some(())
    })
    .await;

    assert!(
        !mesh_round_trip(&setup, to, &client).await,
        "the next connection is denied"
    );
    assert!(
        echoes(&mut open, b"after the reload").await,
        "the open one keeps flowing"
    );
    let dump: Value = serde_json::from_str(&get(setup.proxy.admin, "/config_dump").await.unwrap().body).unwrap();
    let names: Vec<&str> = dump["policy"]["authorization_policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["policy"].as_str())
        .collect();
    assert_eq!(names, ["default/deny-sleep", "default/web", "default/try-deny-client"]);
    let record = setup.record().await;
    assert_verdict(&record, "denied_by_policy", "deny", "-");
}
