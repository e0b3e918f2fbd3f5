//! TLS session resumption through the real binary (docs/connections.md#session-resumption): a
//! resumed session is accepted only while the client certificate it was established with is
//! valid and never past `--session-lifetime`; the access log says when a session was resumed or
//! a resumption was declined. rustls and `openssl s_client -sess_out/-sess_in` clients, TLS 1.2
//! and 1.3.

#[path = "operations/harness.rs"]
#[allow(dead_code)] // the operations tests' harness; this file uses the binary and the echo app
mod harness;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use harness::{echo_app, Binary};
use peerguard::certs::IssuedCert;
use rustls::{ClientConfig, SupportedProtocolVersion};
use serde_json::Value;
use support::pki::{mesh_id, server_name, Pki, TestDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A client certificate that expires this long after it is made.
const SHORT_VALIDITY: Duration = Duration::from_secs(3);

/// The proxy in front of an echo app with the server certificates of `pki`.
async fn proxy(pki: &Pki, more: &[&str]) -> Binary {
    let app = echo_app().await;
    let cert_dir = pki.write("server", &pki.server).display().to_string();
    let listen = format!("127.0.0.1:0={app}");
    let mut args = vec!["--cert-dir", &cert_dir, "--listen", &listen];
    args.extend(more);
    Binary::start(&args).await
}

/// The next access-log record.
async fn access_record(proxy: &mut Binary) -> Value {
    loop {
        let line = proxy.log_line("connection").await;
        if line["target"] == "peerguard::access" {
            return line;
        }
    }
}

/// One mesh connection with `config` (its session cache carries over between calls): an echo
/// round trip, then a clean close. Returns whether the client resumed.
async fn rustls_round_trip(proxy: &Binary, config: &Arc<ClientConfig>) -> std::io::Result<bool> {
    let tcp = TcpStream::connect(proxy.listen[0]).await?;
    let mut tls = TlsConnector::from(config.clone()).connect(server_name(), tcp).await?;
    tls.write_all(b"ping").await?;
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.shutdown().await?;
    Ok(resumed)
}

async fn a_resumption_ends_with_the_client_certificate(versions: &[&'static SupportedProtocolVersion]) {
    let pki = Pki::new();
    let mut proxy = proxy(&pki, &[]).await;
    let client = pki.mesh.issue_workload(&mesh_id("client"), SHORT_VALIDITY).unwrap();
    let config = pki.client_config_for_versions(&["istio"], Some(&client), versions);

    assert!(
        !rustls_round_trip(&proxy, &config).await.unwrap(),
        "the first handshake is full"
    );
    let record = access_record(&mut proxy).await;
    assert_eq!(
        (record["reason"].as_str(), record["resumed"].as_bool()),
        (Some("mtls"), Some(false))
    );

    assert!(rustls_round_trip(&proxy, &config).await.unwrap(), "the session resumes");
    let record = access_record(&mut proxy).await;
    assert_eq!(
        (record["reason"].as_str(), record["resumed"].as_bool()),
        (Some("mtls"), Some(true))
    );
    assert_eq!(record["peer"], mesh_id("client").to_string());

    // Past notAfter (X.509 counts whole seconds): the resumption is declined, and the full
    // handshake that follows refuses the expired certificate.
    tokio::time::sleep(SHORT_VALIDITY + Duration::from_millis(1500)).await;
    assert!(rustls_round_trip(&proxy, &config).await.is_err(), "expired: refused");
    let record = access_record(&mut proxy).await;
    assert_eq!(record["action"], "refuse");
    assert_eq!(record["reason"], "client_cert_untrusted");
    assert_eq!(record["resumed"], false);
    assert_eq!(record["resumption_declined"], "certificate_expired");
}

#[tokio::test]
async fn tls13_tickets_stop_resuming_when_the_client_certificate_expires() {
    a_resumption_ends_with_the_client_certificate(TLS13).await;
}

#[tokio::test]
async fn tls12_session_ids_stop_resuming_when_the_client_certificate_expires() {
    a_resumption_ends_with_the_client_certificate(TLS12).await;
}

async fn a_resumption_ends_with_the_session_lifetime(versions: &[&'static SupportedProtocolVersion]) {
    let pki = Pki::new();
    let mut proxy = proxy(&pki, &["--session-lifetime", "2s"]).await;
    let config = pki.client_config_for_versions(&["istio"], Some(&pki.mesh_client()), versions);

    assert!(!rustls_round_trip(&proxy, &config).await.unwrap());
    assert!(
        rustls_round_trip(&proxy, &config).await.unwrap(),
        "resumes within the lifetime"
    );
    for _ in 0..2 {
        access_record(&mut proxy).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A TLS 1.3 chain of tickets does not extend the lifetime: each inherits the first's.
    assert!(
        !rustls_round_trip(&proxy, &config).await.unwrap(),
        "a full handshake again"
    );
    let record = access_record(&mut proxy).await;
    assert_eq!(record["reason"], "mtls");
    assert_eq!(record["resumed"], false);
    assert_eq!(record["resumption_declined"], "session_lifetime");
}

#[tokio::test]
async fn tls13_tickets_stop_resuming_after_the_session_lifetime() {
    a_resumption_ends_with_the_session_lifetime(TLS13).await;
}

#[tokio::test]
async fn tls12_session_ids_stop_resuming_after_the_session_lifetime() {
    a_resumption_ends_with_the_session_lifetime(TLS12).await;
}

/// `openssl s_client` with a session file: `-sess_out` saves the session (the newest TLS 1.3
/// ticket), `-sess_in` offers it. Returns s_client's output.
fn s_client(proxy: SocketAddr, client_dir: &Path, version: &str, session_flags: &[&str], session: &Path) -> String {
    let output = Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .args(["s_client", "-connect", &proxy.to_string(), "-alpn", "istio", version])
        .arg("-cert")
        .arg(client_dir.join("cert-chain.pem"))
        .arg("-key")
        .arg(client_dir.join("key.pem"))
        .arg("-CAfile")
        .arg(client_dir.join("root-cert.pem"))
        .args(
            session_flags
                .iter()
                .flat_map(|flag| [std::ffi::OsStr::new(flag), session.as_os_str()]),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            // A line to the echo app; EOF a moment later, once the TLS 1.3 ticket that follows
            // the handshake has arrived (s_client quits at EOF and saves what it has by then).
            let mut stdin = child.stdin.take().expect("piped stdin");
            std::io::Write::write_all(&mut stdin, b"ping\n")?;
            std::thread::sleep(Duration::from_millis(500));
            drop(stdin);
            child.wait_with_output()
        })
        .expect("run openssl s_client");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

async fn openssl_resumes_until_the_certificate_expires(version: &'static str) {
    let pki = Pki::new();
    let mut proxy = proxy(&pki, &[]).await;
    let dir = TestDir::new(&format!("resumption-openssl{version}"));
    let client: IssuedCert = pki.mesh.issue_workload(&mesh_id("client"), SHORT_VALIDITY).unwrap();
    let client_dir = pki.write(&format!("short-lived{version}"), &client);
    let session = dir.path().join("session.pem");
    let listen = proxy.listen[0];
    let run = |flags: &'static [&'static str]| {
        let (client_dir, session) = (client_dir.clone(), session.clone());
        async move {
            tokio::task::spawn_blocking(move || s_client(listen, &client_dir, version, flags, &session))
                .await
                .unwrap()
        }
    };

    let first = run(&["-sess_out"]).await;
    assert!(first.contains("New, TLS"), "{first}");
    assert_eq!(access_record(&mut proxy).await["resumed"], false);

    let second = run(&["-sess_in", "-sess_out"]).await;
    assert!(second.contains("Reused, TLS"), "{second}");
    let record = access_record(&mut proxy).await;
    assert_eq!(
        (record["reason"].as_str(), record["resumed"].as_bool()),
        (Some("mtls"), Some(true))
    );

    tokio::time::sleep(SHORT_VALIDITY + Duration::from_millis(1500)).await;
    let third = run(&["-sess_in"]).await;
    assert!(!third.contains("Reused, TLS"), "{third}");
    let record = access_record(&mut proxy).await;
    assert_eq!(record["reason"], "client_cert_untrusted");
    assert_eq!(record["resumption_declined"], "certificate_expired");
}

#[tokio::test]
async fn openssl_tls12_resumption_is_refused_after_the_certificate_expires() {
    openssl_resumes_until_the_certificate_expires("-tls1_2").await;
}

#[tokio::test]
async fn openssl_tls13_resumption_is_refused_after_the_certificate_expires() {
    openssl_resumes_until_the_certificate_expires("-tls1_3").await;
}
