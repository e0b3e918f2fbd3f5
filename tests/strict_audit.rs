//! The STRICT audit live (docs/strict-audit.md): real sockets from several 127.0.0.x sources,
//! plaintext over TCP, mesh mTLS from rustls and `openssl s_client`, the app's own TLS; then
//! what `/strict_audit`, the metrics and `peerguard audit` say about it.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::admin::{eventually, get, sample};
use support::app::TestApp;
use support::clients::{client_config, connect_from, plaintext_exchange_from, tls_exchange_from};
use support::pki::Pki;
use support::proxy::{namespace_policy, start_proxy, start_proxy_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_peerguard");

fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The `/strict_audit` document.
async fn audit(admin: SocketAddr) -> Value {
    let answer = get(admin, "/strict_audit").await.expect("GET /strict_audit");
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).expect("JSON")
}

/// The port's entry in the audit, once it has counted `connections`.
async fn port_audited(admin: SocketAddr, port: u16, connections: u64) -> Value {
    eventually(
        &format!("port {port} to have {connections} audited connections"),
        || async {
            let audit = audit(admin).await;
            let entry = audit["ports"].as_array()?.iter().find(|p| p["port"] == port)?.clone();
            (entry["connections"] == connections).then_some(entry)
        },
    )
    .await
}

/// `(address, kind, verdict, connections)` of each source, in the table's order.
fn sources(port: &Value) -> Vec<(String, String, String, u64)> {
    port["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap().to_owned(),
                s["kind"].as_str().unwrap().to_owned(),
                s["verdict"].as_str().unwrap().to_owned(),
                s["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(address: &str, kind: &str, verdict: &str, connections: u64) -> (String, String, String, u64) {
    (address.into(), kind.into(), verdict.into(), connections)
}

/// Three ports of one workload: the namespace PERMISSIVE, one port DISABLE, one STRICT.
fn three_mode_policy(disable: u16, strict: u16) -> String {
    format!(
        "{}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: server
  namespace: default
spec:
  selector:
    matchLabels:
      app: server
  portLevelMtls:
    {disable}:
      mode: DISABLE
    {strict}:
      mode: STRICT
",
        namespace_policy("PERMISSIVE", false)
    )
}

/// `peerguard audit` as a person runs it, bounded in time.
async fn run_audit(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new("timeout")
            .arg("20")
            .arg(BIN)
            .arg("audit")
            .args(&args)
            .output()
            .expect("run peerguard audit");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// A mesh mTLS call from `from` by the real `openssl s_client`, with the mesh client's files;
/// stdin stays open a second so the echo comes back before s_client quits at its EOF.
async fn openssl_mtls_from(from: IpAddr, proxy: SocketAddr, client_dir: std::path::PathBuf) -> String {
    tokio::task::spawn_blocking(move || {
        let dir = client_dir.display().to_string();
        let output = Command::new("timeout")
            .args(["20", "sh", "-c"])
            .arg(format!(
                "(printf 'hello from openssl\\n'; sleep 1) | openssl s_client -brief -bind {from}:0 -connect {proxy} -alpn istio \
                 -cert {dir}/cert-chain.pem -key {dir}/key.pem -CAfile {dir}/root-cert.pem"
            ))
            .output()
            .expect("run openssl s_client");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_is_counted_by_verdict_and_kind_and_tabled_by_source() {
    let pki = Pki::new();
    let (permissive_app, disable_app, strict_app) =
        (TestApp::start().await, TestApp::start().await, TestApp::start().await);
    let (permissive, disable, strict) = (
        permissive_app.addr.port(),
        disable_app.addr.port(),
        strict_app.addr.port(),
    );
    let proxy = start_proxy_for(
        &pki,
        &three_mode_policy(disable, strict),
        &[permissive_app.addr, disable_app.addr, strict_app.addr],
        &["--sniff-timeout", "300ms"],
    )
    .await;
    let running = &proxy.running;
    let (to_permissive, to_disable, to_strict) = (running.explicit[0], running.explicit[1], running.explicit[2]);
    let admin = running.admin;

    let mesh_client = pki.mesh_client();
    let mesh = pki.client_config(&["istio"], Some(&mesh_client));
    let app_tls = client_config(&["h2"], None);
    let foreign = pki.client_config(&["istio"], Some(&pki.foreign_client()));

    // PERMISSIVE: 3 plaintext from .2; mesh mTLS from .3 (rustls, then openssl); the app's
    // own TLS twice from .4; a mesh ALPN with an untrusted certificate from .5; a client that
    // waits for the server to speak first from .8.
    for _ in 0..3 {
        let reply = plaintext_exchange_from(source(2), to_permissive, b"plain\n")
            .await
            .unwrap();
        assert_eq!(reply, b"plain\n");
    }
    let terminated = tls_exchange_from(source(3), to_permissive, mesh.clone(), b"mtls\n")
        .await
        .unwrap();
    assert_eq!(terminated.reply, b"mtls\n");
    let openssl = openssl_mtls_from(source(3), to_permissive, pki.write("client", &mesh_client)).await;
    assert!(openssl.contains("hello from openssl"), "{openssl}");
    for _ in 0..2 {
        let passed = tls_exchange_from(source(4), to_permissive, app_tls.clone(), b"app tls\n")
            .await
            .unwrap();
        assert_eq!(
            passed.server_cert, permissive_app.cert.cert_der,
            "the app's own certificate answered"
        );
    }
    assert!(tls_exchange_from(source(5), to_permissive, foreign, b"x")
        .await
        .is_err());
    let mut silent = connect_from(source(8), to_permissive).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    silent.write_all(b"late\n").await.unwrap();
    silent.shutdown().await.unwrap();
    let mut reply = Vec::new();
    silent.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"late\n");

    // DISABLE: plaintext from .6, the app's own TLS from .7, a mesh client from .3.
    plaintext_exchange_from(source(6), to_disable, b"plain\n")
        .await
        .unwrap();
    tls_exchange_from(source(7), to_disable, app_tls.clone(), b"tls\n")
        .await
        .unwrap();

    // STRICT: plaintext (refused) and mesh mTLS from .9: neither is audited.
    let _ = plaintext_exchange_from(source(9), to_strict, b"plain\n").await;
    tls_exchange_from(source(9), to_strict, mesh.clone(), b"mtls\n")
        .await
        .unwrap();

    let port = port_audited(admin, permissive, 9).await;
    assert_eq!(port["mode"], "PERMISSIVE");
    assert_eq!(
        (port["pass"].as_u64(), port["refuse"].as_u64(), port["unknown"].as_u64()),
        (Some(2), Some(5), Some(2))
    );
    assert_eq!(port["evicted_sources"], 0);
    // Refused first, most connections first, then the most recent; the two mTLS passes from
    // .3 are not listed.
    assert_eq!(
        sources(&port),
        [
            row("127.0.0.2", "plaintext", "refuse", 3),
            row("127.0.0.8", "server_first", "refuse", 1),
            row("127.0.0.5", "mtls", "refuse", 1),
            row("127.0.0.4", "tls", "unknown", 2),
        ]
    );
    let app_tls_source = &port["sources"][3];
    assert_eq!(app_tls_source["sni"], "localhost");
    assert_eq!(app_tls_source["alpn"], serde_json::json!(["h2"]));
    assert!(app_tls_source["first_seen_unix"].as_u64() <= app_tls_source["last_seen_unix"].as_u64());

    let port = port_audited(admin, disable, 2).await;
    assert_eq!(port["mode"], "DISABLE");
    assert_eq!(
        sources(&port),
        [
            row("127.0.0.6", "plaintext", "refuse", 1),
            row("127.0.0.7", "tls", "unknown", 1)
        ],
        "a DISABLE port is not read, yet the copy loop saw who sent what"
    );
    let audit = audit(admin).await;
    let ports: Vec<u64> = audit["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert!(
        !ports.contains(&u64::from(strict)),
        "the STRICT port is not audited: {ports:?}"
    );
    assert_eq!(audit["max_sources_per_port"], 256);

    let scrape = get(admin, "/stats/prometheus").await.unwrap().body;
    let series = |port: u16, verdict: &str, kind: &str| {
        sample(
            &scrape,
            &format!("peerguard_strict_audit_total{{port=\"{port}\",verdict=\"{verdict}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(series(permissive, "refuse", "plaintext"), Some(3.0));
    assert_eq!(series(permissive, "pass", "mtls"), Some(2.0));
    assert_eq!(series(permissive, "unknown", "tls"), Some(2.0));
    assert_eq!(series(permissive, "refuse", "mtls"), Some(1.0));
    assert_eq!(series(permissive, "refuse", "server_first"), Some(1.0));
    assert_eq!(series(disable, "refuse", "plaintext"), Some(1.0));
    assert_eq!(series(disable, "unknown", "tls"), Some(1.0));
    assert!(
        !scrape.contains(&format!("peerguard_strict_audit_total{{port=\"{strict}\"")),
        "no audit series for the STRICT port:\n{scrape}"
    );
    assert_eq!(
        sample(&scrape, "peerguard_strict_audit_evicted_sources_total"),
        Some(0.0)
    );

    let (ok, out, err) = run_audit(vec!["--admin".into(), admin.to_string()]).await;
    assert!(ok, "{err}");
    let summary = out
        .lines()
        .find(|line| line.starts_with(&format!("{permissive} ")))
        .unwrap_or_else(|| panic!("a summary row for port {permissive}:\n{out}"));
    let cells: Vec<&str> = summary.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(
        cells,
        [
            permissive.to_string().as_str(),
            "PERMISSIVE",
            "9",
            "2",
            "5 (55.6%)",
            "2 (22.2%)"
        ],
        "{out}"
    );
    let fix_first = out
        .lines()
        .skip_while(|line| !line.starts_with(&format!("Port {permissive} (PERMISSIVE), sources to fix first:")))
        .nth(2)
        .unwrap_or_else(|| panic!("the sources of port {permissive}:\n{out}"));
    let words: Vec<&str> = fix_first.split_whitespace().collect();
    assert_eq!(words[..4], ["127.0.0.2", "plaintext", "refuse", "3"], "{out}");
    assert!(
        out.contains("localhost") && out.contains("h2"),
        "the app-TLS source's SNI and ALPN:\n{out}"
    );
    assert!(
        !out.contains(&format!("\n{strict} ")),
        "no row for the STRICT port:\n{out}"
    );

    let (ok, json, err) = run_audit(vec![
        "--admin".into(),
        admin.to_string(),
        "--output".into(),
        "json".into(),
    ])
    .await;
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&json).expect("--output json is the document");
    assert_eq!(printed["ports"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_ports_are_not_audited() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("STRICT", false), app.addr, &[]).await;
    let admin = proxy.running.admin;
    let _ = plaintext_exchange_from(source(20), proxy.addr, b"plain\n").await;
    let mesh = pki.client_config(&["istio"], Some(&pki.mesh_client()));
    tls_exchange_from(source(21), proxy.addr, mesh, b"mtls\n")
        .await
        .unwrap();
    support::admin::counted(admin, "terminate", "mtls").await;
    support::admin::counted(admin, "refuse", "plaintext_on_strict").await;
    assert_eq!(audit(admin).await["ports"], serde_json::json!([]));
    let scrape = get(admin, "/stats/prometheus").await.unwrap().body;
    assert!(!scrape.contains("peerguard_strict_audit_total{"), "{scrape}");
    let (ok, out, err) = run_audit(vec!["--admin".into(), admin.to_string()]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("No connection on a PERMISSIVE or DISABLE port yet."),
        "{out}"
    );
}

/// 10,000 clients from 10,000 loopback addresses (127.1.0.1 ...), 64 at a time.
const FLOOD: u32 = 10_000;

fn flood_source(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_table_stays_within_its_bound_under_a_flood_of_distinct_sources() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("PERMISSIVE", false), app.addr, &[]).await;
    let (admin, target) = (proxy.running.admin, proxy.addr);
    let parallel = Arc::new(Semaphore::new(64));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let permit = parallel.clone().acquire_owned().await.unwrap();
        clients.spawn(async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(20),
                plaintext_exchange_from(flood_source(i), target, b"x"),
            )
            .await;
            drop(permit);
            matches!(reply, Ok(Ok(ref bytes)) if bytes == b"x")
        });
    }
    let mut answered = 0;
    while let Some(done) = clients.join_next().await {
        answered += u32::from(done.unwrap());
    }
    assert_eq!(answered, FLOOD, "every client got its echo");

    let port = port_audited(admin, app.addr.port(), u64::from(FLOOD)).await;
    let kept = sources(&port);
    assert_eq!(kept.len(), 256, "the table is full and no larger");
    assert_eq!(port["evicted_sources"], u64::from(FLOOD) - 256);
    let distinct: std::collections::HashSet<&str> = kept.iter().map(|(address, ..)| address.as_str()).collect();
    assert_eq!(distinct.len(), 256);
    assert!(kept
        .iter()
        .all(|(address, kind, _, n)| address.starts_with("127.1.") && kind == "plaintext" && *n == 1));
    let scrape = get(admin, "/stats/prometheus").await.unwrap().body;
    assert_eq!(
        sample(&scrape, "peerguard_strict_audit_evicted_sources_total"),
        Some(f64::from(FLOOD - 256))
    );
    assert_eq!(
        sample(
            &scrape,
            &format!(
                "peerguard_strict_audit_total{{port=\"{}\",verdict=\"refuse\",kind=\"plaintext\"}}",
                app.addr.port()
            )
        ),
        Some(f64::from(FLOOD))
    );
}
