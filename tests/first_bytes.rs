//! How the first bytes of a connection are read, end to end through the proxy: hellos split
//! over TCP segments and TLS records, oversized and malformed hellos, and server-first
//! protocols that send nothing until the app speaks.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::admin::counted;
use support::app::TestApp;
use support::clients::{client_config, plaintext_exchange, STEP};
use support::pki::Pki;
use support::proxy::{namespace_policy, start_proxy, Proxy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// Writes at most `segment` bytes per write with TCP_NODELAY and a pause between writes, so
/// the proxy receives the ClientHello in many TCP segments.
struct Trickle {
    inner: TcpStream,
    segment: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Trickle {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let n = buf.len().min(self.segment);
        let written = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(_)) = written {
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(2))));
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_hello_split_over_tcp_segments_and_tls_records_is_still_recognised() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("PERMISSIVE", false), app.addr, &[]).await;

    let mut config = (*client_config(&["istio"], Some(&pki.mesh_client()))).clone();
    config.max_fragment_size = Some(64); // every TLS record, the ClientHello's included, is small
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let trickle = Trickle {
        inner: tcp,
        segment: 7,
        pause: None,
    };
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(
        STEP,
        TlsConnector::from(std::sync::Arc::new(config)).connect(name, trickle),
    )
    .await
    .expect("handshake in time")
    .expect("mTLS terminated despite 7-byte segments and 64-byte records");
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        pki.server.cert_der,
        "peerguard terminated it"
    );
    tls.write_all(b"split").await.unwrap();
    tls.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"split");
}

/// The 1.9 KiB ClientHello captured from `openssl s_client` with a long ALPN list.
fn large_hello() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/client_hellos/openssl_long_alpn.bin"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_hello_over_the_size_cap_is_refused_and_never_reaches_the_app() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(
        &pki,
        &namespace_policy("PERMISSIVE", false),
        app.addr,
        &["--max-client-hello", "1024"],
    )
    .await;
    let reply = plaintext_exchange(proxy.addr, &large_hello()).await;
    assert!(reply.map(|r| r.is_empty()).unwrap_or(true), "nothing comes back");
    counted(proxy.running.admin, "refuse", "client_hello_too_large").await;
    assert_eq!(app.accepted(), 0, "an oversized hello never reaches the app");
}

#[tokio::test]
async fn a_hello_under_the_cap_but_over_a_typical_size_passes() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("PERMISSIVE", false), app.addr, &[]).await;
    // Not a whole TLS session, just its first flight: the app's own TLS will reject what
    // follows, but the hello itself must reach it byte for byte.
    let hello = large_hello();
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut rest)).await;
    counted(proxy.running.admin, "passthrough", "passthrough_tls").await;
    assert_eq!(app.accepted(), 1, "the long-ALPN hello was passed through to the app");
}

/// A syntactically broken ClientHello: record header says handshake, body is garbage.
const MALFORMED: &[u8] = &[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef];

#[tokio::test]
async fn a_malformed_hello_is_refused_on_strict_ports() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("STRICT", false), app.addr, &[]).await;
    let reply = plaintext_exchange(proxy.addr, MALFORMED).await;
    assert!(reply.map(|r| r.is_empty()).unwrap_or(true));
    counted(proxy.running.admin, "refuse", "client_hello_malformed").await;
    assert_eq!(app.accepted(), 0);
}

#[tokio::test]
async fn a_malformed_hello_is_passed_through_on_permissive_ports() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(&pki, &namespace_policy("PERMISSIVE", false), app.addr, &[]).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(MALFORMED).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut rest)).await;
    counted(proxy.running.admin, "passthrough", "client_hello_malformed").await;
    assert_eq!(app.accepted(), 1, "the app got the connection");
}

/// An app that greets first, like MySQL or SMTP, and then echoes.
async fn server_first_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(GREETING).await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Connects and waits for the greeting without sending anything; returns it and how long it
/// took, or `None` if the connection closed without one.
async fn greeting(addr: SocketAddr) -> (Option<Vec<u8>>, Duration) {
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 64];
    let got = match tokio::time::timeout(STEP, tcp.read(&mut buf))
        .await
        .expect("an answer within 10 s")
    {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(buf[..n].to_vec()),
    };
    (got, started.elapsed())
}

/// A server-first app behind a proxy whose namespace is in `mode`, and what a client that
/// sends nothing got from it.
struct ServerFirst {
    greeting: Option<Vec<u8>>,
    waited: Duration,
    proxy: Proxy,
    _pki: Pki,
}

async fn wait_for_greeting(mode: &str, sniff_timeout: &str) -> ServerFirst {
    let pki = Pki::new();
    let app = server_first_app().await;
    let proxy = start_proxy(
        &pki,
        &namespace_policy(mode, false),
        app,
        &["--sniff-timeout", sniff_timeout],
    )
    .await;
    let (greeting, waited) = greeting(proxy.addr).await;
    ServerFirst {
        greeting,
        waited,
        proxy,
        _pki: pki,
    }
}

const GREETING: &[u8] = b"220 server speaks first\r\n";

#[tokio::test]
async fn server_first_protocols_work_on_permissive_ports_after_the_sniff_timeout() {
    let run = wait_for_greeting("PERMISSIVE", "300ms").await;
    assert_eq!(run.greeting.as_deref(), Some(GREETING));
    assert!(
        run.waited >= Duration::from_millis(300),
        "forwarded only once the sniff timeout passed: {:?}",
        run.waited
    );
    counted(run.proxy.running.admin, "passthrough", "passthrough_server_first").await;
}

#[tokio::test]
async fn server_first_protocols_work_at_once_on_disable_ports() {
    // A sniff timeout far longer than the test's own limit: DISABLE must not wait for it.
    let run = wait_for_greeting("DISABLE", "1h").await;
    assert_eq!(run.greeting.as_deref(), Some(GREETING));
    counted(run.proxy.running.admin, "passthrough", "passthrough_disabled").await;
}

#[tokio::test]
async fn a_silent_client_is_refused_on_strict_ports_after_the_sniff_timeout() {
    let run = wait_for_greeting("STRICT", "300ms").await;
    assert_eq!(run.greeting, None, "no greeting: the connection is closed");
    assert!(
        run.waited >= Duration::from_millis(300),
        "closed only once the sniff timeout passed: {:?}",
        run.waited
    );
    counted(run.proxy.running.admin, "refuse", "sniff_timeout").await;
}

#[tokio::test]
async fn a_failed_connection_does_not_disturb_the_others() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(
        &pki,
        &namespace_policy("PERMISSIVE", false),
        app.addr,
        &["--max-client-hello", "1024"],
    )
    .await;
    // An open, healthy connection first.
    let mut healthy = TcpStream::connect(proxy.addr).await.unwrap();
    healthy.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    healthy.read_exact(&mut buf).await.unwrap();
    // Then a batch of bad ones.
    for _ in 0..20 {
        let _ = plaintext_exchange(proxy.addr, &large_hello()).await;
        let _ = plaintext_exchange(proxy.addr, MALFORMED).await;
    }
    healthy.write_all(b"after!").await.unwrap();
    healthy.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!", "the healthy connection kept flowing");
    assert_eq!(
        plaintext_exchange(proxy.addr, b"new").await.unwrap(),
        b"new",
        "new connections still work"
    );
}

#[tokio::test]
async fn random_first_bytes_never_take_the_proxy_down() {
    use rand::{Rng, RngCore, SeedableRng};
    let pki = Pki::new();
    let app = TestApp::start().await;
    let proxy = start_proxy(
        &pki,
        &namespace_policy("STRICT", false),
        app.addr,
        &["--sniff-timeout", "200ms"],
    )
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..200 {
        // Half of them look like a TLS handshake record, so the ClientHello parser gets them.
        let mut bytes = vec![0u8; rng.random_range(1..600)];
        rng.fill_bytes(&mut bytes);
        if rng.random_bool(0.5) {
            bytes[0] = 22;
            if bytes.len() > 2 {
                bytes[1] = 3;
            }
        }
        let _ = plaintext_exchange(proxy.addr, &bytes).await;
    }
    let config = client_config(&["istio"], Some(&pki.mesh_client()));
    let exchange = support::clients::tls_exchange(proxy.addr, config, b"still here").await;
    assert_eq!(exchange.expect("mTLS after the garbage").reply, b"still here");
    // Every garbage connection ends refused, with a reason from the closed set, and is counted.
    let admin = proxy.running.admin;
    support::admin::eventually("all 200 garbage connections counted", || async move {
        let mut refused = 0.0;
        for reason in [
            "plaintext_on_strict",
            "client_hello_malformed",
            "client_closed_early",
            "sniff_timeout",
        ] {
            refused += support::admin::connections_counted(admin, "refuse", reason).await;
        }
        (refused == 200.0).then_some(())
    })
    .await;
}
