//! mTLS termination (`inbound::terminate` with `TlsAcceptors`) against real clients (rustls, `openssl s_client`) over
//! 127.0.0.1: ALPN selection, peer identity, and the reason each kind of bad client ends with.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use peerguard::inbound::terminate::terminate;
use peerguard::outcome::Reason;
use peerguard::policy::AppProtocol;
use peerguard::tls::client_hello::{self, HelloParse};
use peerguard::tls::identity::{spiffe_ids_of, SpiffeId};
use peerguard::tls::server_config::TlsAcceptors;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ProtocolVersion};
use support::pki::{mesh_id, server_name, Pki, TRUST_DOMAIN, VALIDITY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HELLO: usize = 16 * 1024;
const GREETING: &[u8] = b"hello from peerguard";

/// What the server side saw of a completed handshake.
#[derive(Debug)]
struct Accepted {
    alpn: Option<Vec<u8>>,
    peer: Option<SpiffeId>,
    version: Option<ProtocolVersion>,
}

/// Starts a one-connection mTLS server for a port whose protocol is unknown; the returned task
/// ends with what it saw.
async fn serve_one(pki: &Pki) -> (u16, tokio::task::JoinHandle<Result<Accepted, Reason>>) {
    serve_one_speaking(pki, AppProtocol::Unknown).await
}

/// Starts a one-connection mTLS server for a port whose app speaks `protocol`.
async fn serve_one_speaking(
    pki: &Pki,
    protocol: AppProtocol,
) -> (u16, tokio::task::JoinHandle<Result<Accepted, Reason>>) {
    let acceptors = Arc::new(
        TlsAcceptors::new(&pki.server_credentials(), TRUST_DOMAIN, Duration::from_secs(3600)).expect("acceptors"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let task = tokio::spawn(async move {
        tokio::time::timeout(STEP_TIMEOUT, accept_one(listener, acceptors, protocol))
            .await
            .unwrap_or(Err(Reason::HandshakeTimeout))
    });
    (port, task)
}

/// What the data path does: read the ClientHello, then `inbound::terminate` with the bytes
/// read replayed.
async fn accept_one(
    listener: TcpListener,
    acceptors: Arc<TlsAcceptors>,
    protocol: AppProtocol,
) -> Result<Accepted, Reason> {
    let (mut tcp, _) = listener.accept().await.map_err(|_| Reason::ClientIoError)?;
    let mut prefix = Vec::new();
    let hello = loop {
        if prefix.len() >= MAX_HELLO {
            return Err(Reason::ClientHelloTooLarge);
        }
        let mut chunk = [0u8; 2048];
        let n = tcp.read(&mut chunk).await.map_err(|_| Reason::ClientIoError)?;
        if n == 0 {
            return Err(Reason::ClientClosedEarly);
        }
        prefix.extend_from_slice(&chunk[..n]);
        match client_hello::parse(&prefix) {
            HelloParse::Complete(hello) => break hello,
            HelloParse::Incomplete { .. } => continue,
            HelloParse::NotTls => return Err(Reason::PlaintextOnStrict),
            HelloParse::Malformed(_) => return Err(Reason::ClientHelloMalformed),
        }
    };
    let mut terminated = terminate(tcp, prefix, &hello.alpn, protocol, &acceptors, STEP_TIMEOUT)
        .await
        .result?;
    let connection = terminated.stream.connection();
    let accepted = Accepted {
        alpn: terminated.alpn.clone(),
        peer: Some(terminated.peer.id.clone()),
        version: connection.protocol_version(),
    };
    // The client may already be gone (openssl quits at stdin EOF); that is not the server's failure.
    let _ = terminated.stream.write_all(GREETING).await;
    let _ = terminated.stream.shutdown().await;
    Ok(accepted)
}

/// Connects with `config`, reads until EOF; Ok(bytes) only if the whole exchange worked.
async fn connect(port: u16, config: Arc<ClientConfig>) -> Result<(Option<Vec<u8>>, Vec<u8>), std::io::Error> {
    let exchange = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut tls = TlsConnector::from(config).connect(server_name(), tcp).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut received = Vec::new();
        tls.read_to_end(&mut received).await?;
        Ok((alpn, received))
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

type Handshake = (
    Result<(Option<Vec<u8>>, Vec<u8>), std::io::Error>,
    Result<Accepted, Reason>,
);

async fn handshake(pki: &Pki, config: Arc<ClientConfig>) -> Handshake {
    handshake_speaking(pki, AppProtocol::Unknown, config).await
}

async fn handshake_speaking(pki: &Pki, protocol: AppProtocol, config: Arc<ClientConfig>) -> Handshake {
    let (port, server) = serve_one_speaking(pki, protocol).await;
    let client = connect(port, config).await;
    (client, server.await.expect("server task"))
}

#[tokio::test]
async fn istio_marker_alone_negotiates_no_alpn_and_records_the_peer() {
    let pki = Pki::new();
    let client_cert = pki.mesh_client();
    let (client, server) = handshake(&pki, pki.client_config(&["istio"], Some(&client_cert))).await;
    let accepted = server.expect("handshake accepted");
    assert_eq!(accepted.alpn, None);
    assert_eq!(accepted.peer, Some(mesh_id("client")));
    assert_eq!(client.expect("client exchange"), (None, GREETING.to_vec()));
}

#[tokio::test]
async fn h2_is_selected_next_to_the_istio_marker_when_it_is_all_the_client_speaks() {
    let pki = Pki::new();
    let client_cert = pki.mesh_client();
    let (client, server) = handshake(&pki, pki.client_config(&["istio", "h2"], Some(&client_cert))).await;
    assert_eq!(server.expect("handshake accepted").alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(client.expect("client exchange").0.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn curls_list_gets_http11_when_nothing_declares_the_protocol() {
    let pki = Pki::new();
    let client_cert = pki.mesh_client();
    let (client, server) = handshake(&pki, pki.client_config(&["h2", "http/1.1"], Some(&client_cert))).await;
    assert_eq!(
        server.expect("handshake accepted").alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(client.expect("client exchange").0.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn each_declared_protocol_selects_only_what_the_app_speaks() {
    let pki = Pki::new();
    let client_cert = pki.mesh_client();
    let cases: &[(&[&str], AppProtocol, Option<&str>)] = &[
        (&["http/1.1", "h2"], AppProtocol::Http2, Some("h2")),
        (&["h2"], AppProtocol::Http2, Some("h2")),
        (&["h2", "http/1.1"], AppProtocol::Http1, Some("http/1.1")),
        // Nothing the app speaks: no ALPN, and the handshake still completes.
        (&["h2"], AppProtocol::Http1, None),
        (&["h2", "http/1.1"], AppProtocol::Tcp, None),
    ];
    for &(alpn, protocol, expected) in cases {
        let expected = expected.map(str::as_bytes);
        let (client, server) = handshake_speaking(&pki, protocol, pki.client_config(alpn, Some(&client_cert))).await;
        let context = format!("{alpn:?} on a {protocol} port");
        assert_eq!(server.expect(&context).alpn.as_deref(), expected, "{context}");
        assert_eq!(
            client.expect(&context),
            (expected.map(<[u8]>::to_vec), GREETING.to_vec()),
            "{context}"
        );
    }
}

#[tokio::test]
async fn server_order_prefers_http11_over_http10_whatever_the_client_order() {
    let pki = Pki::new();
    let client_cert = pki.mesh_client();
    let (_, server) = handshake(&pki, pki.client_config(&["http/1.0", "http/1.1"], Some(&client_cert))).await;
    assert_eq!(
        server.expect("handshake accepted").alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
}

#[tokio::test]
async fn no_client_certificate_is_client_cert_missing() {
    let pki = Pki::new();
    let (client, server) = handshake(&pki, pki.client_config(&["istio"], None)).await;
    assert_eq!(server.map(|_| ()), Err(Reason::ClientCertMissing));
    assert!(client.is_err(), "client must not get the greeting: {client:?}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_untrusted() {
    let pki = Pki::new();
    let client_cert = pki.foreign_client();
    let (client, server) = handshake(&pki, pki.client_config(&["istio"], Some(&client_cert))).await;
    assert_eq!(server.map(|_| ()), Err(Reason::ClientCertUntrusted));
    assert!(client.is_err(), "client must not get the greeting: {client:?}");
}

#[tokio::test]
async fn a_mesh_certificate_without_a_spiffe_id_is_refused_as_such() {
    let pki = Pki::new();
    let client_cert = pki
        .mesh
        .issue_server(&["client.example"], VALIDITY)
        .expect("DNS-only cert");
    let (client, server) = handshake(&pki, pki.client_config(&["istio"], Some(&client_cert))).await;
    assert_eq!(server.map(|_| ()), Err(Reason::ClientCertNoSpiffeId));
    assert!(client.is_err(), "client must not get the greeting: {client:?}");
}

#[tokio::test]
async fn a_client_without_the_key_of_its_certificate_fails_on_the_signature() {
    let pki = Pki::new();
    let presented = pki.mesh_client();
    let someone_elses_key = pki.mesh_client();
    let (client, server) = handshake(&pki, client_config_signing_with(&pki, &presented, &someone_elses_key)).await;
    assert_eq!(server.map(|_| ()), Err(Reason::ClientCertBadSignature));
    assert!(client.is_err(), "client must not get the greeting: {client:?}");
}

/// A rustls client that presents `cert` but signs the CertificateVerify with `key_of`'s key:
/// what a thief with a copied certificate and no key would send. rustls checks that a client
/// certificate and key match when configured, so this resolver skips that check on purpose.
fn client_config_signing_with(
    pki: &Pki,
    cert: &peerguard::certs::IssuedCert,
    key_of: &peerguard::certs::IssuedCert,
) -> Arc<ClientConfig> {
    #[derive(Debug)]
    struct Mismatched(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Mismatched {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_of.key_pem.as_bytes()).expect("key");
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .expect("signing key");
    let mismatched = rustls::sign::CertifiedKey::new(vec![cert.cert_der.clone()], signer);
    let mut config = (*pki.client_config(&["istio"], None)).clone();
    config.client_auth_cert_resolver = Arc::new(Mismatched(Arc::new(mismatched)));
    Arc::new(config)
}

#[tokio::test]
async fn spiffe_id_in_another_trust_domain_is_refused_as_such() {
    let pki = Pki::new();
    let client_cert = pki.other_domain_client();
    let (client, server) = handshake(&pki, pki.client_config(&["istio"], Some(&client_cert))).await;
    assert_eq!(server.map(|_| ()), Err(Reason::ClientCertWrongTrustDomain));
    assert!(client.is_err(), "client must not get the greeting: {client:?}");
}

#[tokio::test]
async fn tls12_only_client_completes_mtls() {
    let pki = Pki::new();
    let client_cert = pki.mesh_client();
    let config = pki.client_config_for_versions(&["istio", "http/1.1"], Some(&client_cert), &[&rustls::version::TLS12]);
    let (client, server) = handshake(&pki, config).await;
    let accepted = server.expect("handshake accepted");
    assert_eq!(accepted.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(accepted.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(accepted.peer, Some(mesh_id("client")));
    assert_eq!(client.expect("client exchange").1, GREETING);
}

#[tokio::test]
async fn openssl_s_client_completes_mtls_and_sees_the_server_spiffe_certificate() {
    let pki = Pki::new();
    let client_dir = pki.write("openssl-client", &pki.mesh_client());
    let (port, server) = serve_one(&pki).await;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("20")
            .arg("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-alpn",
                "istio",
                "-showcerts",
            ])
            .arg("-cert")
            .arg(client_dir.join("cert-chain.pem"))
            .arg("-key")
            .arg(client_dir.join("key.pem"))
            .arg("-CAfile")
            .arg(client_dir.join("root-cert.pem"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client")
    })
    .await
    .expect("openssl task");
    let stdout = String::from_utf8_lossy(&output.stdout);

    let accepted = server.await.expect("server task").expect("handshake accepted");
    assert_eq!(accepted.peer, Some(mesh_id("client")));
    assert_eq!(accepted.alpn, None);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{stdout}");
    assert!(stdout.contains("No ALPN negotiated"), "{stdout}");
    let shown = CertificateDer::pem_slice_iter(stdout.as_bytes())
        .next()
        .expect("s_client -showcerts prints the server chain")
        .expect("PEM parses");
    assert_eq!(spiffe_ids_of(&shown), vec![mesh_id("server")]);
}
