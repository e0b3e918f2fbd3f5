//! The handshake ceiling: a minimal tokio-rustls server, this harness binary re-executed with
//! `--rustls-server ADDR --rustls-cert-dir DIR` and pinned to the proxy core. It does what
//! peerguard's mTLS termination does minus everything peerguard adds (ClientHello peek, policy,
//! the upstream connection, metrics, logs): the same credentials, the same rustls provider and
//! protocol versions, a required client certificate verified against the mesh roots, one TLS 1.3
//! ticket per handshake as peerguard sends, then the app's own echo/sink in-process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use peerguard::tls::credentials::Credentials;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub fn run(listen: SocketAddr, cert_dir: &Path) -> anyhow::Result<()> {
    let credentials = Credentials::load_dir(cert_dir)?;
    let provider = peerguard::tls::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(credentials.roots.clone(), provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(credentials.key.clone())));
    config.send_tls13_tickets = 1;
    config.alpn_protocols = vec![b"istio".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    // One thread, as the proxies have one core; the least a tokio server can be.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            // An error ends that connection only; the clients report what they saw.
            tokio::spawn(async move {
                stream.set_nodelay(true)?;
                crate::app::serve(acceptor.accept(stream).await?).await
            });
        }
    })
}
