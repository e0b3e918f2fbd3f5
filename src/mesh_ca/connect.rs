//! The gRPC channel to the mesh CA: TCP, then TLS verified against the mesh root for the CA's
//! host name (ALPN h2, as gRPC over TLS requires), done by peerguard's own connector so that a
//! failure says which step failed: reaching the address, or trusting the certificate there.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why no connection to the CA came up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Unreachable(String),
    /// The CA's certificate did not verify against the mesh root for its name.
    #[error("its TLS certificate is not trusted: {0}")]
    Untrusted(String),
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("--ca-address host {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("HTTP/2: {0}")]
    Http2(tonic::transport::Error),
}

/// What the connector itself saw fail; tonic wraps it, [`find_dial_error`] unwraps it.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("TCP: {0}")]
    Tcp(std::io::Error),
    #[error("{0}")]
    Untrusted(rustls::Error),
    #[error("{0}")]
    Tls(std::io::Error),
}

impl From<&DialError> for ConnectError {
    fn from(error: &DialError) -> Self {
        match error {
            DialError::Tcp(_) => ConnectError::Unreachable(error.to_string()),
            DialError::Untrusted(_) => ConnectError::Untrusted(error.to_string()),
            DialError::Tls(_) => ConnectError::Tls(error.to_string()),
        }
    }
}

/// Connects to the CA at `address`, whose certificate must be valid for `server_name` under
/// `roots`. The returned channel is used for one issuance and dropped: a renewal is hours away,
/// and a new connection picks up a new address or root.
pub async fn channel(
    address: &str,
    server_name: &str,
    roots: Arc<RootCertStore>,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| ConnectError::ServerName(server_name.into()))?;
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(ConnectError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let address = address.to_owned();
    // tonic sees plain `http` and leaves TLS to the connector; `origin` makes the requests say
    // https and the CA's name, as any gRPC client over TLS does.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(ConnectError::Http2)?
        .origin(origin(&address))
        .timeout(timeout);
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, name, address) = (connector.clone(), name.clone(), address.clone());
        async move {
            let tcp = TcpStream::connect(address.as_str()).await.map_err(DialError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await.map_err(classify_tls)?;
            Ok::<_, DialError>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connect)
        .await
        .map_err(|e| match find_dial_error(&e) {
            Some(dial) => ConnectError::from(dial),
            None => ConnectError::Http2(e),
        })
}

/// `https://HOST:PORT`, for the `:authority` and `:scheme` of each request.
fn origin(address: &str) -> Uri {
    format!("https://{address}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("https://mesh-ca"))
}

/// A certificate rustls refused is a trust problem; anything else in the handshake is not.
fn classify_tls(error: std::io::Error) -> DialError {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(refused @ rustls::Error::InvalidCertificate(_)) => DialError::Untrusted(refused.clone()),
        _ => DialError::Tls(error),
    }
}

/// The connector's own error inside tonic's, if that is what failed.
fn find_dial_error(error: &tonic::transport::Error) -> Option<&DialError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = source {
        if let Some(found) = current.downcast_ref::<DialError>() {
            return Some(found);
        }
        source = current.source();
    }
    None
}
