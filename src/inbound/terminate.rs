//! terminate: the rustls handshake over the replayed stream, and the peer's SPIFFE identity.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::inbound::outcome::Reason;
use crate::inbound::prefixed::PrefixedIo;
use crate::policy::AppProtocol;
use crate::tls::identity::SpiffeId;
use crate::tls::server_config::{handshake_failure_reason, TlsAcceptors};

/// A finished handshake: the decrypted stream and who is on the other end.
pub struct Terminated {
    pub stream: TlsStream<PrefixedIo<TcpStream>>,
    /// The client certificate's SPIFFE ID (the verifier has already required one in the
    /// trust domain, so this is only `None` if the certificate vanished, which rustls prevents).
    pub peer: Option<SpiffeId>,
    /// The ALPN protocol the server selected, if any.
    pub alpn: Option<Vec<u8>>,
}

/// Runs the server handshake on `tcp`, replaying `prefix` (the ClientHello already read), with
/// the server configuration whose ALPN list fits `offered_alpn`, the client's, and `protocol`,
/// what the app speaks on this port.
pub async fn terminate(
    tcp: TcpStream,
    prefix: Vec<u8>,
    offered_alpn: &[Vec<u8>],
    protocol: AppProtocol,
    acceptors: &TlsAcceptors,
    timeout: Duration,
) -> Result<Terminated, Reason> {
    let acceptor = TlsAcceptor::from(acceptors.config_for(offered_alpn, protocol));
    let handshake = acceptor.accept(PrefixedIo::new(prefix, tcp));
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Err(_elapsed) => return Err(Reason::HandshakeTimeout),
        Ok(Err(e)) => return Err(handshake_failure_reason(&e)),
        Ok(Ok(stream)) => stream,
    };
    let (_, connection) = stream.get_ref();
    let peer = acceptors.peer_identity(connection);
    let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
    Ok(Terminated { stream, peer, alpn })
}
