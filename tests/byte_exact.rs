//! 64 MiB of random bytes through each path — plaintext passthrough, passthrough of the app's
//! own TLS, and mTLS termination — arrive intact in both directions, with half-close: the
//! client's EOF reaches the app, and the app's echo still flows back after it.

mod support;

use rustls::pki_types::ServerName;
use support::app::TestApp;
use support::clients::{client_config, stream_echo};
use support::pki::Pki;
use support::proxy::{namespace_policy, start_proxy};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SIZE: usize = 64 * 1024 * 1024;

enum Path {
    Plaintext,
    AppTls,
    Mtls,
}

async fn stream_through(path: Path, seed: u64) {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("PERMISSIVE", false), app.addr, &[]).await;
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let (sent, echoed, echoed_len) = match path {
        Path::Plaintext => stream_echo(tcp, SIZE, seed).await,
        Path::AppTls => {
            let tls = TlsConnector::from(client_config(&["h2"], None))
                .connect(name, tcp)
                .await
                .expect("app TLS");
            stream_echo(tls, SIZE, seed).await
        }
        Path::Mtls => {
            let config = client_config(&["istio"], Some(&pki.mesh_client()));
            let tls = TlsConnector::from(config).connect(name, tcp).await.expect("mTLS");
            stream_echo(tls, SIZE, seed).await
        }
    };
    let seen = app.wait_for_finished(1).await;
    assert_eq!(
        (seen[0].received_len, seen[0].received_sha256),
        (SIZE as u64, sent),
        "client -> app intact"
    );
    assert_eq!(
        (echoed_len, echoed),
        (SIZE as u64, sent),
        "app -> client intact, after the client's half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_passthrough_is_byte_exact_both_ways() {
    stream_through(Path::Plaintext, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_tls_passthrough_is_byte_exact_both_ways() {
    stream_through(Path::AppTls, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_termination_is_byte_exact_both_ways() {
    stream_through(Path::Mtls, 3).await;
}
