//! terminate: the rustls handshake from the replayed ClientHello on, and the peer's SPIFFE identity.

use std::io;
use std::time::Duration;

use rustls::CertificateError;

use tokio::net::TcpStream;

use crate::inbound::tls_stream::ServerTls;
use crate::outcome::Reason;
use crate::policy::AppProtocol;
use crate::tls::server_config::{Peer, PeerIdentityError, PeerRejected, TlsAcceptors};
use crate::tls::sessions::Declined;

/// A finished handshake: the decrypted stream and who is on the other end.
pub struct Terminated {
    /// Boxed: a TLS stream is large, and moved from the handshake to the forwarding future it
    /// would take space in each of them for the connection's whole life.
    pub stream: Box<ServerTls>,
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
/// the server configuration whose ALPN list fits `offered_alpn`, the client's, and `protocol`,
/// what the app speaks on this port.
pub async fn terminate(
    tcp: TcpStream,
    prefix: Vec<u8>,
    offered_alpn: &[Vec<u8>],
    protocol: AppProtocol,
    acceptors: &TlsAcceptors,
    timeout: Duration,
) -> Handshaken {
    let handshake = acceptors.handshake(offered_alpn, protocol);
    let accept = ServerTls::accept(handshake.config.clone(), tcp, prefix);
    let result = match tokio::time::timeout(timeout, accept).await {
        Err(_elapsed) => Err(Reason::HandshakeTimeout),
        Ok(Err(e)) => Err(handshake_failure_reason(&e)),
        Ok(Ok(stream)) => {
            let connection = stream.connection();
            let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
            match handshake.finish(connection) {
                Ok(peer) => Ok(Terminated {
                    stream: Box::new(stream),
                    peer,
                    alpn,
                }),
                Err(rejected) => Err(rejection_reason(rejected)),
            }
        }
    };
    Handshaken {
        result,
        declined: handshake.declined(),
    }
}

/// The [`Reason`] for a peer refused after rustls finished.
fn rejection_reason(rejected: PeerRejected) -> Reason {
    match rejected {
        PeerRejected::NoCertificate => Reason::ClientCertMissing,
        PeerRejected::Unparsable | PeerRejected::Expired => Reason::ClientCertUntrusted,
        PeerRejected::NotInTrustDomain => Reason::ClientCertWrongTrustDomain,
    }
}

/// The [`Reason`] a failed server handshake ends the connection with. tokio-rustls reports
/// rustls errors as an `io::Error` of kind `InvalidData` wrapping the `rustls::Error`
/// (so does [`ServerTls`]).
pub fn handshake_failure_reason(error: &io::Error) -> Reason {
    let Some(tls_error) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return Reason::HandshakeFailed;
    };
    #[allow(deprecated)] // UnsupportedSignatureAlgorithm: older rustls paths still return it.
    match tls_error {
        rustls::Error::NoCertificatesPresented => Reason::ClientCertMissing,
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PeerIdentityError>() {
                Some(PeerIdentityError::NoSpiffeId) => Reason::ClientCertNoSpiffeId,
                Some(PeerIdentityError::WrongTrustDomain { .. }) => Reason::ClientCertWrongTrustDomain,
                None => Reason::ClientCertUntrusted,
            }
        }
        rustls::Error::InvalidCertificate(
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithm
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
        ) => Reason::ClientCertBadSignature,
        rustls::Error::InvalidCertificate(_) => Reason::ClientCertUntrusted,
        _ => Reason::HandshakeFailed,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;

    use super::*;
    use crate::tls::identity::SpiffeId;

    fn io_error(error: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn handshake_errors_map_to_reasons() {
        let other = |error: PeerIdentityError| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
        };
        let cases = [
            (rustls::Error::NoCertificatesPresented, Reason::ClientCertMissing),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                Reason::ClientCertUntrusted,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                Reason::ClientCertUntrusted,
            ),
            (other(PeerIdentityError::NoSpiffeId), Reason::ClientCertNoSpiffeId),
            (
                other(PeerIdentityError::WrongTrustDomain {
                    found: SpiffeId::new("other.domain", "a", "b").unwrap(),
                    expected: "cluster.local".into(),
                }),
                Reason::ClientCertWrongTrustDomain,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
                Reason::ClientCertBadSignature,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(io::Error::other("x"))))),
                Reason::ClientCertUntrusted,
            ),
            (rustls::Error::NoApplicationProtocol, Reason::HandshakeFailed),
        ];
        for (error, reason) in cases {
            assert_eq!(handshake_failure_reason(&io_error(error)), reason);
        }
        assert_eq!(
            handshake_failure_reason(&io::Error::from(io::ErrorKind::ConnectionReset)),
            Reason::HandshakeFailed
        );
    }
}
