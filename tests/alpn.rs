//! The ALPN peerguard selects when it terminates mTLS, end to end with real clients and apps
//! (docs/connections.md#which-alpn-a-terminated-connection-gets): curl's default list against
//! an HTTP/1.1 app, an h2-only rustls client against ports declared HTTP/2, and what
//! `/config_dump` says about each port's protocol.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use support::admin::{counted, get};
use support::app::TestApp;
use support::clients::{client_config, tls_exchange};
use support::http_app::HttpApp;
use support::pki::Pki;
use support::proxy::{namespace_policy, start_proxy};

/// A Service selecting the proxy's workload (`app=server` in `default`) whose port 80 maps to
/// the workload port `target`; `declaration` is the rest of the port entry, e.g. `name: grpc`.
fn service(target: u16, declaration: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  selector: {{app: server}}\n  ports:\n  - {{port: 80, targetPort: {target}, {declaration}}}\n"
    )
}

/// `curl -v` over HTTPS with a mesh client certificate and curl's default ALPN list, printing
/// the status and HTTP version it ended with. `-k`: peerguard's certificate names a SPIFFE ID,
/// not a host, so curl cannot check a host name; the client certificate is what matters here.
fn curl_with_mesh_certificate(proxy: SocketAddr, client_dir: &Path) -> Output {
    Command::new("timeout")
        .args([
            "20",
            "curl",
            "-v",
            "-sS",
            "-k",
            "-w",
            "\n%{http_code} %{http_version}\n",
        ])
        .arg("--cert")
        .arg(client_dir.join("cert-chain.pem"))
        .arg("--key")
        .arg(client_dir.join("key.pem"))
        .arg(format!("https://127.0.0.1:{}/", proxy.port()))
        .output()
        .expect("run curl")
}

async fn curl_gets_200_from_the_http11_app(policy: String) {
    let pki = Pki::new();
    let app = HttpApp::start().await;
    let proxy = start_proxy(&pki, &policy, app.addr, &[]).await;
    let client_dir = pki.write("curl-client", &pki.mesh_client());
    let output = tokio::task::spawn_blocking(move || curl_with_mesh_certificate(proxy.addr, &client_dir))
        .await
        .expect("curl task");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "curl exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("ALPN") && line.contains("offer") && line.contains("h2")),
        "curl offered its default list, h2 included:\n{stderr}"
    );
    assert!(stdout.contains("HTTP/1.1 app: GET / as HTTP/1.1"), "{stdout}");
    assert!(stdout.ends_with("\n200 1.1\n"), "{stdout}");
    assert_eq!(app.answered(), 1);
    counted(proxy.running.admin, "terminate", "mtls").await;
}

#[tokio::test]
async fn curl_with_a_mesh_certificate_gets_200_from_an_http11_app_on_a_permissive_port_with_http_alpns() {
    curl_gets_200_from_the_http11_app(namespace_policy("PERMISSIVE", true)).await;
}

#[tokio::test]
async fn curl_with_a_mesh_certificate_gets_200_from_an_http11_app_on_a_strict_port() {
    curl_gets_200_from_the_http11_app(namespace_policy("STRICT", false)).await;
}

#[tokio::test]
async fn the_http11_app_cannot_speak_h2_so_negotiating_it_would_fail() {
    let app = HttpApp::start().await;
    let addr = app.addr;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "20",
                "curl",
                "-sS",
                "--http2-prior-knowledge",
                &format!("http://{addr}/"),
            ])
            .output()
            .expect("run curl")
    })
    .await
    .expect("curl task");
    assert!(
        !output.status.success(),
        "an h2 client gets no answer from the HTTP/1.1 app: {output:?}"
    );
}

/// A rustls client offering `alpn` with a mesh certificate, through a STRICT proxy started
/// with `policy` and `extra` in front of the echo app; returns the negotiated ALPN.
async fn negotiated(
    alpn: &[&str],
    policy: impl Fn(u16) -> String,
    extra: impl Fn(u16) -> Vec<String>,
) -> Option<String> {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let port = app.addr.port();
    let extra = extra(port);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let proxy = start_proxy(&pki, &policy(port), app.addr, &extra).await;
    let exchange = tls_exchange(proxy.addr, client_config(alpn, Some(&pki.mesh_client())), b"ping")
        .await
        .expect("the exchange completes");
    assert_eq!(exchange.server_cert, pki.server.cert_der, "peerguard terminated it");
    assert_eq!(exchange.reply, b"ping");
    exchange.alpn.map(|alpn| String::from_utf8_lossy(&alpn).into_owned())
}

#[tokio::test]
async fn an_h2_only_client_negotiates_h2_on_a_port_declared_http2() {
    let strict = namespace_policy("STRICT", false);
    let declared_by: [(&str, String); 3] = [
        ("name: grpc-api", String::new()),
        ("name: web, appProtocol: http2", String::new()),
        ("name: web", "http2".to_string()),
    ];
    for (declaration, flag) in declared_by {
        let alpn = negotiated(
            &["h2"],
            |port| format!("{strict}{}", service(port, declaration)),
            |port| match flag.as_str() {
                "" => Vec::new(),
                protocol => vec!["--app-protocol".to_string(), format!("{port}={protocol}")],
            },
        )
        .await;
        assert_eq!(alpn.as_deref(), Some("h2"), "{declaration} {flag}");
    }
}

#[tokio::test]
async fn curls_list_gets_h2_on_a_port_declared_grpc_and_http11_on_one_declared_http() {
    let strict = namespace_policy("STRICT", false);
    for (declaration, expected) in [("name: grpc", "h2"), ("name: http-web", "http/1.1")] {
        let alpn = negotiated(
            &["h2", "http/1.1"],
            |port| format!("{strict}{}", service(port, declaration)),
            |_| Vec::new(),
        )
        .await;
        assert_eq!(alpn.as_deref(), Some(expected), "{declaration}");
    }
}

#[tokio::test]
async fn an_h2_only_client_gets_no_alpn_from_an_http11_port_and_the_handshake_goes_on() {
    let strict = namespace_policy("STRICT", false);
    let alpn = negotiated(
        &["h2"],
        |port| format!("{strict}{}", service(port, "appProtocol: http")),
        |_| Vec::new(),
    )
    .await;
    assert_eq!(alpn, None);
}

#[tokio::test]
async fn config_dump_shows_each_ports_protocol_and_what_declared_it() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let port = app.addr.port();
    let policy = format!(
        "{}{}",
        namespace_policy("STRICT", false),
        service(port, "name: grpc-api")
    );
    let flag = "7000=tcp";
    let proxy = start_proxy(&pki, &policy, app.addr, &["--app-protocol", flag]).await;
    let dump: Value = serde_json::from_str(&get(proxy.running.admin, "/config_dump").await.expect("dump").body)
        .expect("config_dump is JSON");
    let protocol_of = |wanted: u16| {
        dump["policy"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["port"] == wanted)
            .map(|p| p["protocol"].clone())
    };
    assert_eq!(
        protocol_of(7000),
        Some(json!({"protocol": "tcp", "source": "--app-protocol 7000=tcp"}))
    );
    assert_eq!(
        protocol_of(port),
        Some(json!({"protocol": "http2", "source": "Service default/web port 80 (name grpc-api)"}))
    );
    assert_eq!(
        dump["policy"]["other_ports"]["protocol"],
        json!({"protocol": "unknown", "source": null})
    );
}
