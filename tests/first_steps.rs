//! A newcomer's first steps and what they get back: host names in `--listen`, durations without
//! a unit, a trust domain written as a URI (mistakes on `run` exit 2 with one line that says
//! what is wrong and what is expected), `certs` run twice into one directory, and the admin
//! address opened in a browser.

mod support;

use std::process::Output;

use support::admin::get;
use support::app::TestApp;
use support::pki::{Pki, TestDir};
use support::proxy::{start_proxy, start_run_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_peerguard");

/// `peerguard run` with a listener and certificates that validate, plus `extra`; the mistakes
/// under test are all caught before anything is bound or read.
fn run_with(extra: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(["run", "--inbound", "none", "--cert-dir", "/nonexistent"])
        .args(extra)
        .output()
        .expect("peerguard runs")
}

fn exits_2_saying(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
}

#[test]
fn a_sniff_timeout_without_a_unit_exits_2_with_the_spellings_it_could_mean() {
    let output = run_with(&["--listen", "127.0.0.1:0=127.0.0.1:1", "--sniff-timeout", "5"]);
    exits_2_saying(&output, "`5` has no unit: write 5s, 5ms, 5m or 5h");
}

#[test]
fn a_trust_domain_written_as_a_spiffe_uri_exits_2_saying_what_one_looks_like() {
    let output = run_with(&[
        "--listen",
        "127.0.0.1:0=127.0.0.1:1",
        "--trust-domain",
        "spiffe://cluster.local",
    ]);
    exits_2_saying(
        &output,
        "--trust-domain \"spiffe://cluster.local\" is not a trust domain name",
    );
    exits_2_saying(&output, "such as cluster.local (without spiffe:// or a path)");
}

#[test]
fn a_listen_host_name_other_than_localhost_exits_2_naming_it() {
    let output = run_with(&["--listen", "localhost:25000=app.internal:24000"]);
    exits_2_saying(
        &output,
        "--listen \"localhost:25000=app.internal:24000\": APP `app.internal:24000`: `app.internal` is not an IP \
         address (host names other than localhost are not resolved)",
    );
}

#[tokio::test]
async fn a_listener_and_app_given_as_localhost_carry_plaintext() {
    let app = TestApp::start().await;
    let pki = Pki::new();
    let certs = pki.write("certs", &pki.server);
    let listen = format!("localhost:0=localhost:{}", app.addr.port());
    let certs = certs.display().to_string();
    let running = start_run_line(&[
        "peerguard",
        "run",
        "--inbound",
        "none",
        "--listen",
        &listen,
        "--cert-dir",
        &certs,
        "--admin",
        "127.0.0.1:0",
        "--health",
        "127.0.0.1:0",
    ])
    .await;
    let listener = running.explicit[0];
    assert!(listener.ip().is_loopback() && listener.is_ipv4(), "{listener}");

    let mut client = tokio::net::TcpStream::connect(listener).await.expect("connect");
    client.write_all(b"hello over localhost").await.expect("write");
    client.shutdown().await.expect("half-close");
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).await.expect("read");
    assert_eq!(
        echoed, b"hello over localhost",
        "the echo app answered through peerguard"
    );
    assert_eq!(app.wait_for_finished(1).await[0].head, b"hello over localhost");
}

#[test]
fn certs_refuses_to_overwrite_a_key_unless_forced() {
    let dir = TestDir::new("certs-force");
    let out = dir.path().join("workload");
    let certs = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["certs", "--out", out.to_str().unwrap()])
            .args(["--spiffe", "spiffe://cluster.local/ns/default/sa/app"])
            .args(extra)
            .output()
            .expect("peerguard runs")
    };
    assert!(certs(&[]).status.success());
    let key = std::fs::read(out.join("key.pem")).expect("key written");

    let again = certs(&[]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already holds cert-chain.pem, key.pem, root-cert.pem: pass --force to overwrite them"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("key.pem")).unwrap(), key, "the key is untouched");

    assert!(certs(&["--force"]).status.success());
    assert_ne!(
        std::fs::read(out.join("key.pem")).unwrap(),
        key,
        "--force writes a new key"
    );
}

#[tokio::test]
async fn the_admin_root_lists_the_endpoints() {
    let app = TestApp::start().await;
    let pki = Pki::new();
    let proxy = start_proxy(&pki, "", app.addr, &[]).await;
    let index = get(proxy.running.admin, "/").await.expect("GET /");
    assert_eq!(index.status, 200, "{index:?}");
    for endpoint in ["/config_dump", "/stats/prometheus", "/ready"] {
        assert!(index.body.contains(endpoint), "{endpoint} in {}", index.body);
        assert_eq!(
            get(proxy.running.admin, endpoint).await.unwrap().status,
            200,
            "{endpoint}"
        );
    }
}
