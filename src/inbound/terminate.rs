//! terminate: the rustls handshake over the replayed stream, and the peer's SPIFFE identity.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::inbound::outcome::Reason;
use crate::inbound::prefixed::PrefixedIo;
use crate::tls::server_config::{handshake_failure_reason, Peer, TlsAcceptors};
use crate::tls::sessions::Declined;

/// A finished handshake: the decrypted stream and who is on the other end.
pub struct Terminated {
    pub stream: TlsStream<PrefixedIo<TcpStream>>,
    pub peer: Peer,
    /// The ALPN protocol the server selected, if any.
    pub alpn: Option<Vec<u8>>,
}

/// What a handshake came to, and whether it was refused a resumption on the way (which a
/// failed handshake must report too: an expired certificate that tried to resume).
pub struct Handshaken {
    pub result: Result<Terminated, Reason>,
    pub declined: Option<Declined>,
}

/// Runs the server handshake on `tcp`, replaying `prefix` (the ClientHello already read), with
/// the server configuration whose ALPN list fits `offered_alpn`, the client's.
pub async fn terminate(
    tcp: TcpStream,
    prefix: Vec<u8>,
    offered_alpn: &[Vec<u8>],
    acceptors: &TlsAcceptors,
    timeout: Duration,
) -> Handshaken {
    let handshake = acceptors.handshake(&acceptors.config_for(offered_alpn));
    let accept = TlsAcceptor::from(handshake.config.clone()).accept(PrefixedIo::new(prefix, tcp));
    let result = match tokio::time::timeout(timeout, accept).await {
        Err(_elapsed) => Err(Reason::HandshakeTimeout),
        Ok(Err(e)) => Err(handshake_failure_reason(&e)),
        Ok(Ok(stream)) => {
            let (_, connection) = stream.get_ref();
            let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
            handshake
                .finish(connection)
                .map(|peer| Terminated { stream, peer, alpn })
        }
    };
    Handshaken {
        result,
        declined: handshake.declined(),
    }
}
