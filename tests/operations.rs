//! Operating peerguard (docs/operating.md): readiness, the admin endpoint, metrics, hot
//! reload of policy and certificates, the JSON access log, drain on SIGTERM, and the
//! connection cap. Real sockets on 127.0.0.1, real TLS, the proxy in-process via `app::start`
//! or as the real binary where signals matter.

#[path = "operations/harness.rs"]
mod harness;
mod support;

use std::time::Duration;

use harness::{config_dump, echo_app, echoes, start, strict_port_policy, Binary, KubeMount};
use peerguard::config::DrainTimes;
use support::admin::{eventually, get, metric_reaches, sample};
use support::pki::{mesh_id, server_name, Pki, TestDir, VALIDITY};
use support::proxy::namespace_policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a test waits to be sure something does *not* happen.
const QUIET: Duration = Duration::from_millis(300);

/// Connects through the proxy as a mesh client (ALPN `istio`) presenting `client`.
async fn mesh_handshake(
    pki: &Pki,
    proxy: std::net::SocketAddr,
    client: &peerguard::certs::IssuedCert,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy).await?;
    TlsConnector::from(pki.client_config(&["istio"], Some(client)))
        .connect(server_name(), tcp)
        .await
}

/// The leaf certificate the proxy presented on a completed handshake.
fn served_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, connection) = tls.get_ref();
    connection.peer_certificates().expect("server certificate")[0].to_vec()
}

/// `--listen 127.0.0.1:0=<app>`.
fn listen_to(app: std::net::SocketAddr) -> String {
    format!("127.0.0.1:0={app}")
}

/// What most tests start from: a PKI, an echo app, a scratch directory, and the proxy's
/// arguments for them.
struct Setup {
    pki: Pki,
    app: std::net::SocketAddr,
    dir: TestDir,
    /// `--cert-dir` with the server's certificates.
    cert_dir: String,
    /// `--listen` to the echo app.
    listen: String,
}

impl Setup {
    async fn new(label: &str) -> Self {
        let pki = Pki::new();
        let app = echo_app().await;
        let cert_dir = pki.write("server", &pki.server).display().to_string();
        Setup {
            pki,
            app,
            dir: TestDir::new(label),
            cert_dir,
            listen: listen_to(app),
        }
    }

    /// `--cert-dir` and `--listen` for this setup, then `more`.
    fn args(&self, more: &[&str]) -> Vec<String> {
        let mut args = vec!["--cert-dir", &self.cert_dir, "--listen", &self.listen];
        args.extend(more);
        args.into_iter().map(String::from).collect()
    }

    /// Writes `yaml` as the policy file and returns its path.
    fn write_policy(&self, yaml: &str) -> std::path::PathBuf {
        let file = self.dir.path().join("policy.yaml");
        std::fs::write(&file, yaml).unwrap();
        file
    }
}

/// Polls the readiness probe until it answers `status`; returns the body that came with it.
async fn readiness_becomes(health: std::net::SocketAddr, status: u16) -> String {
    eventually(&format!("readiness to answer {status}"), || async {
        let answer = get(health, "/healthz/ready").await.ok()?;
        (answer.status == status).then_some(answer.body)
    })
    .await
}

#[tokio::test]
async fn readiness_follows_certificate_expiry_rotation_and_drain() {
    let pki = Pki::new();
    let app = echo_app().await;
    let dir = TestDir::new("ops-ready");
    let short_lived = pki
        .mesh
        .issue_workload(&mesh_id("server"), Duration::from_secs(3))
        .unwrap();
    let mut certs = KubeMount::certificates(&dir.path().join("certs"), &short_lived);
    let cert_dir = certs.path().display().to_string();
    let listen = listen_to(app);
    let running = start(&["--cert-dir", &cert_dir, "--listen", &listen]).await;
    let health = running.health;

    readiness_becomes(health, 200).await;

    let body = readiness_becomes(health, 503).await;
    assert!(body.contains("expired"), "the 503 says why: {body}");

    certs.update_certificates(&pki.server);
    readiness_becomes(health, 200).await;

    // An open connection keeps the drain going while the probe is asked.
    let mut open = TcpStream::connect(running.explicit[0]).await.unwrap();
    assert!(echoes(&mut open, b"in flight").await);
    let drain = tokio::spawn(running.drain(DrainTimes {
        accept: Duration::ZERO,
        timeout: Duration::from_secs(30),
    }));
    let body = readiness_becomes(health, 503).await;
    assert!(body.contains("draining"), "{body}");
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    assert_eq!(drain.await.unwrap(), 0, "the drain ends when the last connection does");
}

#[tokio::test]
async fn a_reload_to_strict_shows_in_config_dump_refuses_new_plaintext_and_spares_open_connections() {
    let setup = Setup::new("ops-strict").await;
    let app = setup.app;
    let mut policy = KubeMount::new(
        &setup.dir.path().join("policy"),
        &[("policy.yaml", &namespace_policy("PERMISSIVE", false))],
    );
    let policy_dir = policy.path().display().to_string();
    let flag = format!("{}=http2", app.port());
    let running = start(&setup.args(&["--policy", &policy_dir, "--app-protocol", &flag])).await;
    let proxy = running.explicit[0];

    let dump = config_dump(running.admin).await;
    assert_eq!(dump["policy"]["generation"], 1);
    assert_eq!(dump["policy"]["ports"][0]["port"], app.port());
    assert_eq!(dump["policy"]["ports"][0]["mode"], "PERMISSIVE");
    let mut open = TcpStream::connect(proxy).await.unwrap();
    assert!(echoes(&mut open, b"before the reload").await);

    policy.update(&[("policy.yaml", &namespace_policy("STRICT", false))]);
    let dump = eventually("config_dump to show the reloaded policy", || async {
        let dump = config_dump(running.admin).await;
        (dump["policy"]["generation"] == 2).then_some(dump)
    })
    .await;
    let port = &dump["policy"]["ports"][0];
    assert_eq!(port["mode"], "STRICT");
    assert_eq!(port["source"]["name"], "default");
    assert_eq!(port["source"]["level"], "namespace");
    assert_eq!(
        port["protocol"]["source"],
        format!("--app-protocol {flag}"),
        "the flag holds across reloads"
    );

    let mut new = TcpStream::connect(proxy).await.unwrap();
    assert!(!echoes(&mut new, b"after the reload").await, "new plaintext is refused");
    assert!(
        echoes(&mut open, b"still flowing").await,
        "the open connection keeps its policy"
    );
}

#[tokio::test]
async fn a_broken_policy_file_keeps_the_last_good_policy_and_counts_the_failure() {
    let setup = Setup::new("ops-broken").await;
    let policy_file = setup.write_policy(&namespace_policy("PERMISSIVE", false));
    let policy = policy_file.display().to_string();
    let running = start(&setup.args(&["--policy", &policy])).await;

    std::fs::write(&policy_file, namespace_policy("strict", false)).unwrap();
    metric_reaches(running.admin, "peerguard_policy_reloads_total{result=\"failed\"}", 1.0).await;

    let dump = config_dump(running.admin).await;
    assert_eq!(dump["policy"]["generation"], 1, "the last good policy stays in force");
    assert_eq!(dump["policy"]["ports"][0]["mode"], "PERMISSIVE");
    let mut plaintext = TcpStream::connect(running.explicit[0]).await.unwrap();
    assert!(echoes(&mut plaintext, b"traffic as before").await);
    let scrape = get(running.admin, "/stats/prometheus").await.unwrap().body;
    assert_eq!(sample(&scrape, "peerguard_policy_generation"), Some(1.0));
    assert_eq!(
        sample(&scrape, "peerguard_policy_reloads_total{result=\"ok\"}"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_on_the_next_handshake() {
    let pki = Pki::new();
    let app = echo_app().await;
    let dir = TestDir::new("ops-rotate");
    let mut certs = KubeMount::certificates(&dir.path().join("certs"), &pki.server);
    let (cert_dir, listen) = (certs.path().display().to_string(), listen_to(app));
    let running = start(&["--cert-dir", &cert_dir, "--listen", &listen]).await;
    let proxy = running.explicit[0];
    let client = pki.mesh_client();

    let mut before = mesh_handshake(&pki, proxy, &client).await.unwrap();
    assert_eq!(served_leaf(&before), pki.server.cert_der.to_vec());

    let rotated = pki.mesh.issue_workload(&mesh_id("server"), VALIDITY).unwrap();
    certs.update_certificates(&rotated);
    eventually("config_dump to show the new certificate", || async {
        let dump = config_dump(running.admin).await;
        (dump["certificate"]["generation"] == 2).then_some(())
    })
    .await;

    let mut after = mesh_handshake(&pki, proxy, &client).await.unwrap();
    assert_eq!(served_leaf(&after), rotated.cert_der.to_vec());
    for tls in [&mut before, &mut after] {
        tls.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping", "both connections reach the app");
    }
}

#[tokio::test]
async fn metrics_count_a_mixed_run_by_reason() {
    let pki = Pki::new();
    let (strict_app, permissive_app) = (echo_app().await, echo_app().await);
    let dir = TestDir::new("ops-metrics");
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, strict_port_policy(strict_app.port())).unwrap();
    let cert_dir = pki.write("server", &pki.server).display().to_string();
    let policy_path = policy_file.display().to_string();
    let (listen_strict, listen_permissive) = (listen_to(strict_app), listen_to(permissive_app));
    let running = start(&[
        "--policy",
        &policy_path,
        "--cert-dir",
        &cert_dir,
        "--listen",
        &listen_strict,
        "--listen",
        &listen_permissive,
    ])
    .await;
    let (strict, permissive) = (running.explicit[0], running.explicit[1]);

    for _ in 0..2 {
        let mut plaintext = TcpStream::connect(permissive).await.unwrap();
        assert!(echoes(&mut plaintext, b"plaintext").await);
    }
    let mut refused = TcpStream::connect(strict).await.unwrap();
    assert!(!echoes(&mut refused, b"plaintext").await);
    let mut mtls = mesh_handshake(&pki, strict, &pki.mesh_client()).await.unwrap();
    mtls.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    mtls.read_exact(&mut pong).await.unwrap();
    drop(mtls);
    // TLS 1.3 clients finish before the server judges their certificate, so the client side
    // may or may not see the refusal; the proxy's count is what matters.
    let _ = mesh_handshake(&pki, strict, &pki.foreign_client()).await;

    let (s, p) = (strict_app.port(), permissive_app.port());
    for (series, count) in [
        (
            format!("peerguard_connections_total{{port=\"{p}\",mode=\"PERMISSIVE\",action=\"passthrough\",reason=\"passthrough_plaintext\"}}"),
            2.0,
        ),
        (
            format!("peerguard_connections_total{{port=\"{s}\",mode=\"STRICT\",action=\"refuse\",reason=\"plaintext_on_strict\"}}"),
            1.0,
        ),
        (
            format!("peerguard_connections_total{{port=\"{s}\",mode=\"STRICT\",action=\"terminate\",reason=\"mtls\"}}"),
            1.0,
        ),
        (
            format!("peerguard_connections_total{{port=\"{s}\",mode=\"STRICT\",action=\"refuse\",reason=\"client_cert_untrusted\"}}"),
            1.0,
        ),
    ] {
        metric_reaches(running.admin, &series, count).await;
    }
    let scrape = get(running.admin, "/stats/prometheus").await.unwrap().body;
    assert_eq!(sample(&scrape, "peerguard_active_connections"), Some(0.0));
    assert_eq!(sample(&scrape, "peerguard_handshake_time_seconds_count"), Some(1.0));
    assert_eq!(
        sample(&scrape, "peerguard_client_hello_size_bytes_count"),
        Some(2.0),
        "one ClientHello per TLS client"
    );
    assert_eq!(
        sample(&scrape, "peerguard_transferred_bytes_total{direction=\"to_client\"}"),
        Some(22.0),
        "two 9-byte echoes and one 4-byte echo"
    );
}

#[tokio::test]
async fn accepting_pauses_at_the_connection_cap_and_resumes() {
    let setup = Setup::new("ops-cap").await;
    let running = start(&setup.args(&["--max-connections", "2"])).await;
    let proxy = running.explicit[0];

    let mut first = TcpStream::connect(proxy).await.unwrap();
    let mut second = TcpStream::connect(proxy).await.unwrap();
    assert!(echoes(&mut first, b"one").await);
    assert!(echoes(&mut second, b"two").await);
    metric_reaches(running.admin, "peerguard_active_connections", 2.0).await;

    // The kernel completes the third connection, but the proxy does not take it.
    let mut third = TcpStream::connect(proxy).await.unwrap();
    third.write_all(b"three").await.unwrap();
    let mut back = [0u8; 5];
    assert!(
        tokio::time::timeout(QUIET, third.read_exact(&mut back)).await.is_err(),
        "no answer while at the cap"
    );

    drop(first);
    tokio::time::timeout(support::admin::DEADLINE, third.read_exact(&mut back))
        .await
        .expect("accepting resumes once a connection ends")
        .unwrap();
    assert_eq!(&back, b"three");
}

#[tokio::test]
async fn sigterm_keeps_accepting_for_drain_accept_then_lets_a_transfer_finish_and_exits_0() {
    let setup = Setup::new("ops-drain").await;
    let mut proxy = Binary::start(&setup.args(&["--drain-accept", "2s", "--drain-timeout", "30s"])).await;
    let address = proxy.listen[0];
    let mut transfer = TcpStream::connect(address).await.unwrap();
    assert!(echoes(&mut transfer, b"first half").await);

    proxy.signal("TERM");
    let body = readiness_becomes(proxy.health, 503).await;
    assert!(body.contains("draining"), "{body}");
    // Clients that have not yet heard the endpoint is gone still get served.
    let mut late = TcpStream::connect(address).await.expect("still accepting");
    assert!(echoes(&mut late, b"late but served").await);
    drop(late);
    eventually("the listener to close", || async {
        TcpStream::connect(address).await.is_err().then_some(())
    })
    .await;

    assert!(echoes(&mut transfer, b"second half").await, "the transfer goes on");
    transfer.shutdown().await.unwrap();
    let mut rest = Vec::new();
    transfer.read_to_end(&mut rest).await.unwrap();
    let status = proxy.exit_status().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sighup_reloads_policy_and_certificates() {
    let setup = Setup::new("ops-sighup").await;
    let policy = setup
        .write_policy(&namespace_policy("PERMISSIVE", false))
        .display()
        .to_string();
    let proxy = Binary::start(&setup.args(&["--policy", &policy])).await;

    proxy.signal("HUP");
    eventually("SIGHUP to reload both, unchanged files included", || async {
        let dump = config_dump(proxy.admin).await;
        (dump["policy"]["generation"] == 2 && dump["certificate"]["generation"] == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_json_access_log_has_every_field_of_a_connection() {
    let setup = Setup::new("ops-log").await;
    let (pki, app) = (&setup.pki, setup.app);
    let mut proxy = Binary::start(&setup.args(&[])).await;
    let mut tls = mesh_handshake(pki, proxy.listen[0], &pki.mesh_client()).await.unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    tls.read_exact(&mut pong).await.unwrap();
    tls.shutdown().await.unwrap();
    drop(tls);

    let line = loop {
        let line = proxy.log_line("connection").await;
        if line["target"] == "peerguard::access" {
            break line;
        }
    };
    for field in [
        "timestamp",
        "source",
        "port",
        "mode",
        "policy",
        "action",
        "reason",
        "sni",
        "alpn",
        "negotiated_alpn",
        "peer",
        "bytes_to_app",
        "bytes_to_client",
        "end",
        "client_hello_bytes",
        "sniff_ms",
        "handshake_ms",
        "duration_ms",
    ] {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(line["port"], app.port());
    assert_eq!(line["mode"], "PERMISSIVE");
    assert_eq!(line["action"], "terminate");
    assert_eq!(line["reason"], "mtls");
    assert_eq!(line["alpn"], "istio");
    assert_eq!(line["peer"], mesh_id("client").to_string());
    assert_eq!(line["bytes_to_app"], 4);
    assert_eq!(line["bytes_to_client"], 4);
}

#[tokio::test]
async fn a_hostile_alpn_is_logged_escaped_in_one_record() {
    let setup = Setup::new("ops-hostile-alpn").await;
    let pki = &setup.pki;
    let mut proxy = Binary::start(&setup.args(&[])).await;
    let forged = "x\n{\"reason\":\"mtls\"} reason=mtls peer=spiffe://cluster.local/ns/istio-system/sa/admin";
    let tcp = TcpStream::connect(proxy.listen[0]).await.unwrap();
    let config = pki.client_config(&[forged, "\u{1b}[31m\"q\\", "istio"], Some(&pki.mesh_client()));
    let mut tls = TlsConnector::from(config).connect(server_name(), tcp).await.unwrap();
    tls.shutdown().await.unwrap();
    drop(tls);

    let line = loop {
        let line = proxy.log_line("connection").await;
        if line["target"] == "peerguard::access" {
            break line;
        }
    };
    assert_eq!(
        line["alpn"],
        "x\\x0a{\\\"reason\\\":\\\"mtls\\\"} reason=mtls peer=spiffe://cluster.local/ns/istio-system/sa/admin,\
         \\x1b[31m\\\"q\\\\,istio"
    );
    assert_eq!(line["reason"], "mtls");
    assert_eq!(line["peer"], mesh_id("client").to_string());
}

#[tokio::test]
async fn a_drain_cuts_what_its_deadline_leaves_open_and_logs_each_cut() {
    let setup = Setup::new("ops-cut").await;
    let mut proxy = Binary::start(&setup.args(&[
        "--drain-accept",
        "0s",
        "--drain-timeout",
        "1s",
        "--sniff-timeout",
        "60s",
    ]))
    .await;
    let address = proxy.listen[0];
    let mut forwarding = TcpStream::connect(address).await.unwrap();
    assert!(echoes(&mut forwarding, b"idle after this").await);
    // Connected, but not a byte sent: still being classified when the deadline comes.
    let mut silent = TcpStream::connect(address).await.unwrap();
    let admin = proxy.admin;
    eventually("both connections to be open in the proxy", || async {
        let scrape = get(admin, "/stats/prometheus").await.ok()?.body;
        (sample(&scrape, "peerguard_active_connections") == Some(2.0)).then_some(())
    })
    .await;

    proxy.signal("TERM");
    let mut records = Vec::new();
    while records.len() < 2 {
        let line = proxy.log_line("connection").await;
        if line["target"] == "peerguard::access" {
            records.push(line);
        }
    }
    records.sort_by_key(|r| r["end"].as_str().map(str::to_owned));
    assert_eq!(
        (records[0]["reason"].as_str(), records[0]["end"].as_str()),
        (Some("drained"), Some("-")),
        "the silent connection: {}",
        records[0]
    );
    assert_eq!(
        (records[1]["reason"].as_str(), records[1]["end"].as_str()),
        (Some("passthrough_plaintext"), Some("drained")),
        "the forwarding connection: {}",
        records[1]
    );
    assert_eq!(records[1]["bytes_to_app"], 15);
    for stream in [&mut forwarding, &mut silent] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(QUIET * 10, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the proxy closed its side");
    }
    assert_eq!(proxy.exit_status().await.code(), Some(0));
}

/// An app endpoint that answers every request `500`: an unhealthy app.
async fn unhealthy_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    addr
}

#[tokio::test]
async fn the_apps_probes_pass_through_the_health_port_while_its_strict_port_refuses_plaintext() {
    let setup = Setup::new("ops-probes").await;
    let app = support::http_app::HttpApp::start().await;
    let sick = unhealthy_app().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let policy = setup.write_policy(&strict_port_policy(app.addr.port()));
    let istio_json = format!(
        r#"{{"/app-health/web/readyz": {{"httpGet": {{"path": "/ready", "port": {sick}, "scheme": "HTTP"}}}},
            "/app-health/web/startupz": {{"tcpSocket": {{"port": {closed}}}}}}}"#,
        sick = sick.port()
    );
    let listen = listen_to(app.addr);
    let running = start(&[
        "--cert-dir",
        &setup.cert_dir,
        "--listen",
        &listen,
        "--policy",
        &policy.display().to_string(),
        "--app-probe",
        &format!("/app-health/web/livez=http:{}/healthz", app.addr.port()),
        "--app-probe",
        &format!("/app-health/other/livez=tcp:{}", app.addr.port()),
        "--kube-app-probers",
        &istio_json,
    ])
    .await;

    // The kubelet's own plaintext probe to the STRICT port would be refused...
    let mut direct = TcpStream::connect(running.explicit[0]).await.unwrap();
    assert!(!echoes(&mut direct, b"GET /healthz HTTP/1.1\r\n\r\n").await);
    // ...so it asks the health port, which probes the app from inside the pod.
    let answered_before = app.answered();
    let http = get(running.health, "/app-health/web/livez").await.unwrap();
    assert_eq!((http.status, http.body.as_str()), (200, "ok\n"));
    assert_eq!(app.answered(), answered_before + 1, "the app itself answered the probe");
    let tcp = get(running.health, "/app-health/other/livez").await.unwrap();
    assert_eq!(tcp.status, 200, "{}", tcp.body);

    let failing_http = get(running.health, "/app-health/web/readyz").await.unwrap();
    assert_eq!(failing_http.status, 503);
    assert!(failing_http.body.contains("answered 500"), "{}", failing_http.body);
    let failing_tcp = get(running.health, "/app-health/web/startupz").await.unwrap();
    assert_eq!(failing_tcp.status, 503);
    assert!(failing_tcp.body.contains("connecting to"), "{}", failing_tcp.body);
    assert_eq!(
        get(running.health, "/app-health/nobody/livez").await.unwrap().status,
        404
    );
}

#[tokio::test]
async fn a_bulk_plaintext_flow_gets_a_kernel_pipe_and_gives_it_back_when_it_goes_quiet() {
    let setup = Setup::new("ops-splice").await;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listen_to(app.local_addr().unwrap());
    let proxy = Binary::start(&["--cert-dir", &setup.cert_dir, "--listen", &listen]).await;
    let at_rest = proxy.pipes();
    let mut client = TcpStream::connect(proxy.listen[0]).await.unwrap();

    // 8 MiB towards an app that does not read yet: the direction carries bulk, so it moves
    // through a pipe, and stalls with bytes in it. Writing first: peerguard connects to the
    // app once it has read the first bytes.
    let bulk: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = bulk.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client
    });
    let (mut app_side, _) = app.accept().await.unwrap();
    eventually("the bulk direction to hold a pipe (two descriptors)", || async {
        (proxy.pipes() == at_rest + 2).then_some(())
    })
    .await;

    let mut received = vec![0u8; bulk.len()];
    app_side.read_exact(&mut received).await.unwrap();
    assert!(received == bulk, "the app gets every byte, in order, through the pipe");
    let mut client = writer.await.unwrap();
    eventually("the quiet connection to give its pipe back", || async {
        (proxy.pipes() == at_rest).then_some(())
    })
    .await;

    client.write_all(b"still open, copied again").await.unwrap();
    let mut after = [0u8; 24];
    app_side.read_exact(&mut after).await.unwrap();
    assert_eq!(
        &after, b"still open, copied again",
        "the connection goes on without its pipe"
    );
}

#[tokio::test]
async fn a_bulk_flow_of_the_apps_own_tls_is_copied_not_spliced() {
    // curl's ClientHello (ALPN h2, http/1.1) opens the app's own TLS, passed through on a
    // PERMISSIVE port; then 8 MiB, as a large TLS upload would be. Made before connecting, so
    // that the hello reaches the proxy well within its sniff timeout.
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/client_hellos/curl_http2.bin"
    ))
    .unwrap();
    let mut stream = hello;
    stream.extend((0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8));

    let setup = Setup::new("ops-splice-tls").await;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listen_to(app.local_addr().unwrap());
    let mut proxy = Binary::start(&["--cert-dir", &setup.cert_dir, "--listen", &listen]).await;
    let at_rest = proxy.pipes();
    let mut client = TcpStream::connect(proxy.listen[0]).await.unwrap();
    let sent = stream.clone();
    // Writing first: peerguard connects to the app once it has read the hello.
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client
    });
    let (mut app_side, _) = app.accept().await.unwrap();

    // Read it in pieces, looking at the proxy's descriptors between them: a spliced direction
    // would hold its pipe from its first full chunk until half a second after the last byte.
    let mut received = vec![0u8; stream.len()];
    for piece in received.chunks_mut(64 * 1024) {
        app_side.read_exact(piece).await.unwrap();
        assert_eq!(
            proxy.pipes(),
            at_rest,
            "the app's own TLS moves by copying, without a pipe"
        );
    }
    assert!(received == stream, "the app gets every byte, in order");
    drop(writer.await.unwrap());
    drop(app_side);
    let line = proxy.next_log_line().await;
    assert_eq!(
        line["reason"], "passthrough_tls",
        "classified as the app's own TLS: {line}"
    );
}
