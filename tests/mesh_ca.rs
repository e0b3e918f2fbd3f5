//! The workload certificate from the mesh CA: peerguard against a real tonic gRPC CA on
//! loopback (tests/support/mesh_ca.rs) — first issuance and what the CA saw, rotation under
//! traffic, the CA down at renewal, refused chains, and start-up failures that say what to fix.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use peerguard::app::Running;
use peerguard::cli::{Cli, Command as PeerguardCommand};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

use support::admin::{eventually, get, metric_reaches, sample};
use support::app::TestApp;
use support::clients::tls_exchange;
use support::logs;
use support::mesh_ca::{Behaviour, Endpoint, TestCa, CLUSTER_ID, TOKEN};
use support::pki::TestDir;

const APP_ID: &str = "spiffe://cluster.local/ns/default/sa/app";
const PAYLOAD: &[u8] = b"ping through peerguard";

/// `peerguard run` in front of `app`, certificates from `ca`, plus `extra` flags.
fn run_line(ca: &TestCa, app: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut line = support::proxy::run_line(app);
    line.extend(ca.run_flags());
    line.extend(extra.iter().map(|s| s.to_string()));
    line
}

async fn start(line: &[String]) -> Result<Running, String> {
    let Ok(PeerguardCommand::Run(args)) = Cli::try_parse_from(line).map(|cli| cli.command) else {
        panic!("not a run command line: {line:?}");
    };
    let config = peerguard::config::Config::from_args(&args).map_err(|e| e.to_string())?;
    peerguard::app::start(&config).await.map_err(|e| e.to_string())
}

async fn config_dump(running: &Running) -> Value {
    let body = get(running.admin, "/config_dump").await.expect("config_dump").body;
    serde_json::from_str(&body).expect("config_dump is JSON")
}

async fn serial_in_use(running: &Running) -> String {
    config_dump(running).await["certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_owned()
}

fn serial_of(der: &CertificateDer<'_>) -> String {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("certificate parses");
    peerguard::tls::credentials::serial_of(&cert)
}

/// A mesh client's mTLS exchange through the proxy; the serial of the certificate the proxy
/// presented, after checking that it chains to the mesh root.
async fn handshake_serial(ca: &TestCa, running: &Running) -> String {
    let client = ca.pki.mesh_client();
    let config = ca.pki.client_config(&["istio"], Some(&client));
    let exchange = tls_exchange(running.explicit[0], config, PAYLOAD)
        .await
        .expect("mTLS exchange");
    assert_eq!(exchange.reply, PAYLOAD, "the app echoed through peerguard");
    let ids = peerguard::tls::identity::spiffe_ids_of(&exchange.server_cert);
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].to_string(), APP_ID);
    serial_of(&exchange.server_cert)
}

async fn renewals(running: &Running, result: &str) -> f64 {
    let scrape = get(running.admin, "/stats/prometheus").await.expect("scrape").body;
    sample(
        &scrape,
        &format!("peerguard_certificate_renewals_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn the_first_certificate_comes_from_the_ca_for_the_spiffe_id_asked_with_token_and_cluster_id() {
    let ca = TestCa::start().await;
    let app = TestApp::start().await;
    let running = start(&run_line(&ca, app.addr, &["--cert-ttl", "1h"]))
        .await
        .expect("proxy starts");

    let seen = ca.seen();
    assert_eq!(seen.len(), 1, "one request at start-up");
    assert_eq!(seen[0].sans, vec![APP_ID.to_owned()], "the CSR's only SAN");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(seen[0].cluster_id.as_deref(), Some(CLUSTER_ID));
    assert_eq!(seen[0].validity_duration, 3600);

    let serial = handshake_serial(&ca, &running).await;
    let dump = config_dump(&running).await;
    let certificate = &dump["certificate"];
    assert_eq!(certificate["serial"], serial.as_str());
    assert_eq!(certificate["spiffe_id"], APP_ID);
    assert_eq!(certificate["source"]["kind"], "mesh_ca");
    assert_eq!(certificate["source"]["from"], ca.addr.to_string());
    let renewal = &certificate["renewal"];
    assert_eq!((renewal["ok"].as_u64(), renewal["failed"].as_u64()), (Some(0), Some(0)));
    let next = renewal["next_at_unix"].as_u64().expect("next renewal");
    let not_after = certificate["not_after_unix"].as_u64().expect("expiry");
    let now = peerguard::tls::identity::unix_seconds(std::time::SystemTime::now());
    // Half of an hour, give or take the 5 % jitter and the seconds this test took.
    assert!(
        (now + 1650..=now + 1900).contains(&next) && next < not_after,
        "{next} {now} {not_after}"
    );
    assert_eq!(dump["ready"]["ready"], true);
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_handshakes_present_the_new_serial() {
    let ca = TestCa::start().await;
    let app = TestApp::start().await;
    let running = start(&run_line(&ca, app.addr, &["--cert-ttl", "4s", "--renew-ratio", "0.3"]))
        .await
        .expect("proxy starts");
    let first = serial_in_use(&running).await;

    // An mTLS connection opened on the first certificate.
    let client = ca.pki.mesh_client();
    let config: Arc<ClientConfig> = ca.pki.client_config(&["istio"], Some(&client));
    let tcp = TcpStream::connect(running.explicit[0]).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut open = TlsConnector::from(config).connect(name, tcp).await.expect("handshake");
    let presented = open.get_ref().1.peer_certificates().expect("server chain")[0].clone();
    assert_eq!(serial_of(&presented), first);
    let mut echo = [0u8; PAYLOAD.len()];
    open.write_all(PAYLOAD).await.expect("send");
    open.read_exact(&mut echo).await.expect("echo");

    eventually("a renewed certificate", || async {
        (serial_in_use(&running).await != first).then_some(())
    })
    .await;
    // The open connection goes on over its session...
    open.write_all(PAYLOAD).await.expect("send after rotation");
    open.read_exact(&mut echo).await.expect("echo after rotation");
    assert_eq!(echo, PAYLOAD);
    // ...and a new handshake gets a renewed certificate (renewals come every ~1.2 s here, so
    // it may be a later one than the renewal seen above).
    let now_presented = handshake_serial(&ca, &running).await;
    assert_ne!(now_presented, first);
    assert!(renewals(&running, "ok").await >= 1.0);
    assert_eq!(ca.seen().iter().filter(|s| s.sans == [APP_ID]).count(), ca.seen().len());
}

#[tokio::test]
async fn the_ca_down_at_renewal_keeps_the_old_certificate_counts_failures_and_recovers() {
    logs::capture();
    let mut ca = TestCa::start().await;
    let app = TestApp::start().await;
    let running = start(&run_line(&ca, app.addr, &["--cert-ttl", "6s", "--renew-ratio", "0.3"]))
        .await
        .expect("proxy starts");
    let first = serial_in_use(&running).await;
    ca.stop().await;

    eventually("two failed renewals", || async {
        (renewals(&running, "failed").await >= 2.0).then_some(())
    })
    .await;
    // Still before the first certificate's expiry: it serves, and the proxy is ready.
    assert_eq!(handshake_serial(&ca, &running).await, first);
    assert_eq!(get(running.health, "/healthz/ready").await.unwrap().status, 200);
    let dump = config_dump(&running).await;
    let last_error = dump["certificate"]["renewal"]["last_error"]
        .as_str()
        .expect("last error");
    assert!(
        last_error.contains(&format!("cannot reach the mesh CA at {}", ca.addr)),
        "{last_error}"
    );
    assert!(
        !logs::lines_with(&["renewal failed", &ca.addr.to_string(), &first]).is_empty(),
        "the failure is logged with the CA address and the serial still in use"
    );

    // Past expiry with no new certificate: not ready, and the reason says so.
    let not_ready = eventually("readiness to turn 503 at expiry", || async {
        let answer = get(running.health, "/healthz/ready").await.ok()?;
        (answer.status == 503).then_some(answer.body)
    })
    .await;
    assert!(
        not_ready.contains(&first) && not_ready.contains("expired"),
        "{not_ready}"
    );

    ca.restart().await;
    let renewed = eventually("a certificate after the CA returned", || async {
        let serial = serial_in_use(&running).await;
        (serial != first).then_some(serial)
    })
    .await;
    assert_eq!(handshake_serial(&ca, &running).await, renewed);
    assert_eq!(get(running.health, "/healthz/ready").await.unwrap().status, 200);
    assert!(renewals(&running, "ok").await >= 1.0);
}

#[tokio::test]
async fn a_chain_for_another_identity_or_from_an_untrusted_ca_is_refused_and_the_old_one_kept() {
    logs::capture();
    let ca = TestCa::start().await;
    let app = TestApp::start().await;
    let running = start(&run_line(
        &ca,
        app.addr,
        &["--cert-ttl", "20s", "--renew-ratio", "0.05"],
    ))
    .await
    .expect("proxy starts");
    let first = serial_in_use(&running).await;

    for (behaviour, reason, failures) in [
        (
            Behaviour::WrongIdentity,
            "the leaf is for spiffe://cluster.local/ns/default/sa/someone-else, not spiffe://cluster.local/ns/default/sa/app",
            1.0,
        ),
        (Behaviour::UntrustedChain, "the chain does not verify to the mesh roots", 2.0),
    ] {
        ca.behave(behaviour);
        eventually("a refused renewal", || async {
            (renewals(&running, "failed").await >= failures).then_some(())
        })
        .await;
        let dump = config_dump(&running).await;
        let last_error = dump["certificate"]["renewal"]["last_error"].as_str().expect("last error").to_owned();
        assert!(last_error.contains(reason), "{last_error}");
        assert_eq!(dump["certificate"]["serial"], first.as_str(), "the old certificate is kept");
        assert_eq!(handshake_serial(&ca, &running).await, first);
        assert!(
            !logs::lines_with(&["renewal failed", &ca.addr.to_string(), reason]).is_empty(),
            "the refusal is logged with its reason"
        );
    }

    ca.behave(Behaviour::Sign);
    eventually("a good renewal", || async {
        (serial_in_use(&running).await != first).then_some(())
    })
    .await;
    assert_eq!(renewals(&running, "ok").await, 1.0);
}

/// Start-up with `extra` flags fails, within `bound`; the error.
async fn start_fails(ca: &TestCa, extra: &[&str], bound: Duration) -> String {
    let app = TestApp::start().await;
    let started = Instant::now();
    let error = match start(&run_line(ca, app.addr, extra)).await {
        Ok(_) => panic!("start-up should fail"),
        Err(error) => error,
    };
    assert!(
        started.elapsed() < bound,
        "gave up after {:?}: {error}",
        started.elapsed()
    );
    error
}

#[tokio::test]
async fn start_up_fails_naming_the_ca_when_its_tls_is_not_trusted() {
    let ca = TestCa::start_with(Endpoint::Foreign).await;
    let error = start_fails(&ca, &["--ca-start-timeout", "2s"], Duration::from_secs(5)).await;
    assert!(
        error.contains(&format!("the mesh CA at {} is not trusted", ca.addr))
            && error.contains(&ca.root_file.display().to_string()),
        "{error}"
    );
    assert!(ca.seen().is_empty(), "no request went out over an untrusted connection");
}

#[tokio::test]
async fn start_up_fails_naming_a_missing_token_file() {
    let ca = TestCa::start().await;
    std::fs::remove_file(&ca.token_file).expect("remove the token");
    let missing_text = ca.token_file.display().to_string();
    let error = start_fails(&ca, &["--ca-start-timeout", "1s"], Duration::from_secs(4)).await;
    assert!(
        error.contains(&format!("no workload certificate from the mesh CA at {}", ca.addr))
            && error.contains(&format!("cannot read the CA token {missing_text}")),
        "{error}"
    );
    assert!(ca.seen().is_empty());
}

#[tokio::test]
async fn start_up_names_the_grpc_status_of_a_rejected_token_or_a_refused_csr() {
    let ca = TestCa::start().await;
    ca.behave(Behaviour::Refuse(Code::Unauthenticated, "token review failed"));
    let error = start_fails(&ca, &["--ca-start-timeout", "1s"], Duration::from_secs(4)).await;
    assert!(
        error.contains(&format!("the mesh CA at {} rejected the token from", ca.addr))
            && error.contains("gRPC status UNAUTHENTICATED: token review failed"),
        "{error}"
    );
    ca.behave(Behaviour::Refuse(Code::InvalidArgument, "bad CSR"));
    let error = start_fails(&ca, &["--ca-start-timeout", "1s"], Duration::from_secs(4)).await;
    assert!(
        error.contains("refused the certificate request: gRPC status INVALID_ARGUMENT: bad CSR"),
        "{error}"
    );
}

#[tokio::test]
async fn a_ca_that_never_answers_is_given_up_on_within_the_start_timeout() {
    let ca = TestCa::start().await;
    ca.behave(Behaviour::Hang);
    let flags = ["--ca-request-timeout", "1s", "--ca-start-timeout", "2s"];
    let error = start_fails(&ca, &flags, Duration::from_secs(4)).await;
    assert!(
        error.contains(&format!("the mesh CA at {} did not answer within", ca.addr)),
        "{error}"
    );

    // A black hole: the kernel completes the TCP handshake, nothing ever reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = silent.local_addr().unwrap().to_string();
    let app = TestApp::start().await;
    let mut line = run_line(&ca, app.addr, &flags);
    let at = line.iter().position(|w| w == "--ca-address").unwrap();
    line[at + 1] = address.clone();
    let started = Instant::now();
    let error = start(&line).await.err().expect("start-up fails");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(
        error.contains(&format!("the mesh CA at {address} did not answer within")),
        "{error}"
    );
}

#[tokio::test]
async fn rsa_keys_are_made_on_request() {
    let ca = TestCa::start().await;
    let app = TestApp::start().await;
    let running = start(&run_line(&ca, app.addr, &["--key-type", "rsa"]))
        .await
        .expect("proxy starts");
    let client = ca.pki.mesh_client();
    let exchange = tls_exchange(
        running.explicit[0],
        ca.pki.client_config(&["istio"], Some(&client)),
        PAYLOAD,
    )
    .await
    .expect("mTLS exchange");
    let (_, cert) = X509Certificate::from_der(exchange.server_cert.as_ref()).unwrap();
    match cert.public_key().parsed().expect("public key") {
        x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
        other => panic!("not RSA: {other:?}"),
    }
}

/// Asks the CA for a certificate for `service_account` over the real gRPC path (tonic's own
/// TLS client here, not peerguard's), as another mesh workload would.
async fn issue_over_grpc(ca: &TestCa, service_account: &str) -> (String, String) {
    use peerguard::mesh_ca::proto::{create_certificate, IstioCertificateRequest};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://cluster.local/ns/default/sa/{service_account}")
            .try_into()
            .unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pki.mesh.cert_pem()))
        .domain_name("127.0.0.1");
    let channel = Channel::from_shared(format!("https://{}", ca.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to the CA");
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let chain = create_certificate(channel, request)
        .await
        .expect("issued")
        .into_inner()
        .cert_chain;
    (chain.concat(), key.serialize_pem())
}

#[tokio::test]
async fn openssl_with_a_ca_issued_chain_completes_mtls_through_peerguard() {
    let ca = TestCa::start().await;
    let app = TestApp::start().await;
    let running = start(&run_line(&ca, app.addr, &["--policy", &strict_policy()]))
        .await
        .expect("proxy starts");
    let (chain, key) = issue_over_grpc(&ca, "client").await;
    let dir = TestDir::new("openssl-client");
    let (chain_file, key_file) = (dir.path().join("cert-chain.pem"), dir.path().join("key.pem"));
    std::fs::write(&chain_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();

    let address = running.explicit[0].to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &address,
                "-alpn",
                "istio",
                "-verify_return_error",
                "-quiet",
                "-no_ign_eof",
            ])
            .arg("-cert")
            .arg(&chain_file)
            .arg("-key")
            .arg(&key_file)
            .arg("-CAfile")
            .arg(&ca.root_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run openssl");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(PAYLOAD).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        (child.wait_with_output().expect("openssl finishes"), ca)
    })
    .await
    .unwrap();
    let (output, _ca) = output;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openssl failed: {stderr}");
    assert!(
        stderr.contains("verify return:1"),
        "openssl verified peerguard's CA-issued chain: {stderr}"
    );
    assert_eq!(stdout.as_bytes(), PAYLOAD, "the app's echo came back through peerguard");
    // peerguard terminated mTLS and saw the client's CA-issued identity.
    metric_reaches(running.admin, "peerguard_tls_handshakes_total{kind=\"full\"}", 1.0).await;
}

/// The `default` namespace STRICT: only mTLS passes, so the openssl exchange above is mTLS.
fn strict_policy() -> String {
    let dir = std::env::temp_dir().join(format!("peerguard-mesh-ca-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("strict.yaml");
    std::fs::write(&file, support::proxy::namespace_policy("STRICT", false)).unwrap();
    file.display().to_string()
}
