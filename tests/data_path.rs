//! The data path end to end on loopback: for each mode (STRICT, PERMISSIVE, DISABLE, and
//! PERMISSIVE with the HTTP ALPN annotation) and each kind of client, what the client saw
//! (whose certificate, which ALPN, the echo) and what the app saw (plaintext, or the
//! untouched ClientHello) — with a real app that speaks plaintext and its own TLS.
//!
//! These are the conformance tables of both policy sources: every row runs with the policy
//! from a file and from the (test) Kubernetes API server.

mod support;

use peerguard::certs::IssuedCert;
use support::admin::counted;
use support::app::TestApp;
use support::clients::{client_config, plaintext_exchange, tls_exchange, TlsExchange};
use support::pki::Pki;
use support::proxy::{namespace_policy, start_proxy, start_proxy_from, PolicyFrom, Proxy};

const PAYLOAD: &[u8] = b"ping through peerguard";

/// The kinds of client the issue lists.
#[derive(Debug, Clone, Copy)]
enum Client {
    Plaintext,
    /// A mesh sidecar: Envoy's ALPN list and a mesh certificate.
    MeshPeer,
    /// Only the `istio` marker and a mesh certificate: nothing for the server to select.
    IstioMarkerOnly,
    /// Standard HTTP ALPNs with a mesh certificate, in curl's order (`h2,http/1.1`). No Service
    /// declares the port's protocol, so the server selects `http/1.1`.
    HttpAlpnWithMeshCert,
    /// The app's own TLS clients: standard ALPNs, no client certificate.
    HttpAlpnNoCert,
    /// TLS with no ALPN at all, no client certificate.
    NoAlpn,
    /// A mesh ALPN without a client certificate.
    MeshAlpnNoCert,
    /// A mesh ALPN with a certificate from another CA.
    ForeignCa,
    /// A mesh ALPN with a mesh-CA certificate whose SPIFFE ID is in another trust domain.
    OtherTrustDomain,
}

/// What should happen to that client.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// peerguard's certificate answers, with this ALPN; the app gets plaintext.
    Terminated(Option<&'static str>),
    /// The app's own certificate answers; the app gets the ClientHello byte for byte.
    AppTls,
    /// The app gets the plaintext as sent.
    Plaintext,
    /// The client fails, the app never sees a connection, and the proxy counts this reason.
    Refused(&'static str),
}

const MESH_ALPNS: [&str; 3] = ["istio-peer-exchange", "istio", "http/1.1"];

impl Client {
    fn cert(self, pki: &Pki) -> Option<IssuedCert> {
        match self {
            Client::MeshPeer | Client::IstioMarkerOnly | Client::HttpAlpnWithMeshCert => Some(pki.mesh_client()),
            Client::ForeignCa => Some(pki.foreign_client()),
            Client::OtherTrustDomain => Some(pki.other_domain_client()),
            Client::Plaintext | Client::HttpAlpnNoCert | Client::NoAlpn | Client::MeshAlpnNoCert => None,
        }
    }

    fn alpn(self) -> &'static [&'static str] {
        match self {
            Client::MeshPeer | Client::MeshAlpnNoCert | Client::ForeignCa | Client::OtherTrustDomain => &MESH_ALPNS,
            Client::IstioMarkerOnly => &["istio"],
            Client::HttpAlpnWithMeshCert | Client::HttpAlpnNoCert => &["h2", "http/1.1"],
            Client::Plaintext | Client::NoAlpn => &[],
        }
    }
}

/// Runs one client against a fresh app and proxy for `policy` read `from` a file or the
/// cluster, and checks `expect`.
async fn check(from: PolicyFrom, policy: &str, client: Client, expect: Expect) {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let (proxy, _cluster) = start_proxy_from(from, &pki, policy, app.addr, &[]).await;
    let context = format!("{client:?} expecting {expect:?}, policy from {from:?}");

    if let Client::Plaintext = client {
        let reply = plaintext_exchange(proxy.addr, PAYLOAD).await;
        match expect {
            Expect::Plaintext => {
                assert_eq!(reply.expect(&context), PAYLOAD, "{context}: the echo");
                let seen = app.wait_for_finished(1).await;
                assert_eq!(
                    (seen[0].client_hello.as_ref(), seen[0].head.as_slice()),
                    (None, PAYLOAD),
                    "{context}"
                );
            }
            Expect::Refused(reason) => {
                assert_refused(reply.map(|r| r.is_empty()), &app, &proxy, reason, &context).await
            }
            _ => panic!("{context}: not a plaintext outcome"),
        }
        return;
    }

    let config = client_config(client.alpn(), client.cert(&pki).as_ref());
    let exchange = tls_exchange(proxy.addr, config, PAYLOAD).await;
    match expect {
        Expect::Terminated(alpn) => {
            let exchange = exchange.expect(&context);
            assert_eq!(
                exchange.server_cert, pki.server.cert_der,
                "{context}: peerguard's mesh certificate answers"
            );
            assert_eq!(
                exchange.alpn.as_deref(),
                alpn.map(str::as_bytes),
                "{context}: negotiated ALPN"
            );
            assert_eq!(exchange.reply, PAYLOAD, "{context}: the echo");
            let seen = app.wait_for_finished(1).await;
            assert_eq!(seen[0].client_hello, None, "{context}: the app got plaintext, not TLS");
            assert_eq!(seen[0].head, PAYLOAD, "{context}: the app got the decrypted bytes");
        }
        Expect::AppTls => {
            let exchange: TlsExchange = exchange.expect(&context);
            assert_eq!(
                exchange.server_cert, app.cert.cert_der,
                "{context}: the app's own certificate answers"
            );
            assert_eq!(exchange.reply, PAYLOAD, "{context}: the echo");
            let seen = app.wait_for_finished(1).await;
            assert_eq!(
                seen[0].client_hello.as_ref(),
                Some(&exchange.client_hello),
                "{context}: the app got the client's ClientHello byte for byte"
            );
        }
        Expect::Refused(reason) => {
            assert_refused(exchange.map(|e| e.reply.is_empty()), &app, &proxy, reason, &context).await
        }
        Expect::Plaintext => panic!("{context}: not a TLS outcome"),
    }
    drop(proxy);
}

/// The client got an error or nothing at all, the app never saw a connection, and the proxy
/// counted the refusal with `reason`.
async fn assert_refused(result: std::io::Result<bool>, app: &TestApp, proxy: &Proxy, reason: &str, context: &str) {
    match result {
        Err(_) | Ok(true) => {}
        Ok(false) => panic!("{context}: the client got a reply"),
    }
    counted(proxy.running.admin, "refuse", reason).await;
    assert_eq!(
        app.accepted(),
        0,
        "{context}: the app must not see a refused connection"
    );
}

async fn check_all(policy: &str, table: &[(Client, Expect)]) {
    for from in [PolicyFrom::File, PolicyFrom::Kubernetes] {
        for &(client, expect) in table {
            check(from, policy, client, expect).await;
        }
    }
}

#[tokio::test]
async fn strict_terminates_every_tls_client_with_a_mesh_certificate_and_refuses_the_rest() {
    check_all(
        &namespace_policy("STRICT", false),
        &[
            (Client::Plaintext, Expect::Refused("plaintext_on_strict")),
            (Client::MeshPeer, Expect::Terminated(Some("http/1.1"))),
            (Client::IstioMarkerOnly, Expect::Terminated(None)),
            (Client::HttpAlpnWithMeshCert, Expect::Terminated(Some("http/1.1"))),
            (Client::HttpAlpnNoCert, Expect::Refused("client_cert_missing")),
            (Client::NoAlpn, Expect::Refused("client_cert_missing")),
            (Client::MeshAlpnNoCert, Expect::Refused("client_cert_missing")),
            (Client::ForeignCa, Expect::Refused("client_cert_untrusted")),
            (
                Client::OtherTrustDomain,
                Expect::Refused("client_cert_wrong_trust_domain"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn permissive_terminates_mesh_alpns_and_passes_everything_else_untouched() {
    check_all(
        &namespace_policy("PERMISSIVE", false),
        &[
            (Client::Plaintext, Expect::Plaintext),
            (Client::MeshPeer, Expect::Terminated(Some("http/1.1"))),
            (Client::IstioMarkerOnly, Expect::Terminated(None)),
            (Client::HttpAlpnWithMeshCert, Expect::AppTls),
            (Client::HttpAlpnNoCert, Expect::AppTls),
            (Client::NoAlpn, Expect::AppTls),
            (Client::MeshAlpnNoCert, Expect::Refused("client_cert_missing")),
            (Client::ForeignCa, Expect::Refused("client_cert_untrusted")),
            (
                Client::OtherTrustDomain,
                Expect::Refused("client_cert_wrong_trust_domain"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn disable_passes_everything_through_even_mesh_mtls() {
    check_all(
        &namespace_policy("DISABLE", false),
        &[
            (Client::Plaintext, Expect::Plaintext),
            (Client::MeshPeer, Expect::AppTls),
            (Client::IstioMarkerOnly, Expect::AppTls),
            (Client::HttpAlpnWithMeshCert, Expect::AppTls),
            (Client::HttpAlpnNoCert, Expect::AppTls),
            (Client::NoAlpn, Expect::AppTls),
            (Client::MeshAlpnNoCert, Expect::AppTls),
            (Client::ForeignCa, Expect::AppTls),
            (Client::OtherTrustDomain, Expect::AppTls),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_http_alpn_annotation_makes_standard_http_alpns_mesh_traffic_on_permissive_ports() {
    check_all(
        &namespace_policy("PERMISSIVE", true),
        &[
            (Client::Plaintext, Expect::Plaintext),
            (Client::MeshPeer, Expect::Terminated(Some("http/1.1"))),
            (Client::HttpAlpnWithMeshCert, Expect::Terminated(Some("http/1.1"))),
            (Client::HttpAlpnNoCert, Expect::Refused("client_cert_missing")),
            (Client::NoAlpn, Expect::AppTls),
            (Client::MeshAlpnNoCert, Expect::Refused("client_cert_missing")),
            (Client::ForeignCa, Expect::Refused("client_cert_untrusted")),
            (
                Client::OtherTrustDomain,
                Expect::Refused("client_cert_wrong_trust_domain"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_down_app_closes_the_client_connection() {
    let pki = Pki::new();
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy: Proxy = start_proxy(&pki, &namespace_policy("PERMISSIVE", false), unused, &[]).await;
    let reply = plaintext_exchange(proxy.addr, PAYLOAD).await;
    assert!(
        reply.map(|r| r.is_empty()).unwrap_or(true),
        "nothing comes back from an app that is not there"
    );
    counted(proxy.running.admin, "refuse", "upstream_connect_failed").await;
}
