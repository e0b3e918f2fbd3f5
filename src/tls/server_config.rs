//! The rustls server side of mTLS termination (PRODUCT.md §2.4): configurations that require a
//! mesh client certificate with a SPIFFE ID in our trust domain, the ALPN choice, and the map
//! from a failed handshake to the connection's [`Reason`].

use std::io;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, ServerConnection,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::alpn;
use super::credentials::Credentials;
use super::identity::{spiffe_id_in, spiffe_ids_of, SpiffeId};
use crate::inbound::outcome::Reason;
use crate::policy::AppProtocol;

/// Resumable sessions kept per credentials generation: enough for the peers of one workload.
const SESSION_CACHE_ENTRIES: usize = 1024;

/// The four server configurations mTLS termination chooses from, one per ALPN outcome.
///
/// rustls aborts with `no_application_protocol` when its configured ALPN list and the client's
/// do not intersect, while Istio wants the handshake to go on with no ALPN (e.g. a client that
/// only offers `istio`). So instead of one config with a list, each outcome gets its own config
/// with exactly that protocol (or none), and [`TlsAcceptors::config_for`] picks by the ALPN the
/// ClientHello parser saw. All four share the verifier, the certificate and the session cache.
pub struct TlsAcceptors {
    trust_domain: String,
    by_alpn: [(&'static [u8], Arc<ServerConfig>); 3],
    no_alpn: Arc<ServerConfig>,
}

/// Why the server configuration could not be built from loaded credentials.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("TLS protocol versions: {0}")]
    Versions(#[from] rustls::Error),
}

/// A client certificate that chains to the mesh roots but is not a peer of this trust domain.
/// Carried inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))` so that
/// [`handshake_failure_reason`] can tell it from an untrusted certificate.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("client certificate has no SPIFFE ID")]
    NoSpiffeId,
    #[error("client SPIFFE ID {found} is not in trust domain {expected}")]
    WrongTrustDomain { found: SpiffeId, expected: String },
}

impl TlsAcceptors {
    pub fn new(credentials: &Credentials, trust_domain: &str) -> Result<Self, ServerConfigError> {
        let provider = super::provider();
        let webpki =
            WebPkiClientVerifier::builder_with_provider(credentials.roots.clone(), provider.clone()).build()?;
        let verifier = Arc::new(SpiffeClientVerifier {
            inner: webpki,
            trust_domain: trust_domain.to_owned(),
        });
        let mut base = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(credentials.key.clone())));
        // Stateful resumption through one shared cache (rustls' default ticketer issues no
        // stateless tickets): a new credentials generation builds new acceptors and so a new
        // cache, which makes every peer be verified again against the new roots. One TLS 1.3
        // ticket per handshake instead of rustls' two: a sidecar peer reconnects one at a time.
        base.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        base.send_tls13_tickets = 1;
        // max_fragment_size stays None: full 16 KiB records, fewest per-record costs.

        let with_alpn = |protocol: &'static [u8]| {
            let mut config = base.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            (protocol, Arc::new(config))
        };
        Ok(TlsAcceptors {
            trust_domain: trust_domain.to_owned(),
            by_alpn: alpn::SELECTABLE.map(with_alpn),
            no_alpn: Arc::new(base),
        })
    }

    /// The configuration for a client that offered `offered` (ClientHello order) on a port whose
    /// app speaks `protocol`: the one with the protocol [`alpn::select`] picks, else the one that
    /// negotiates no ALPN.
    pub fn config_for(&self, offered: &[Vec<u8>], protocol: AppProtocol) -> Arc<ServerConfig> {
        let selected = alpn::select(offered, protocol);
        self.by_alpn
            .iter()
            .find(|(candidate, _)| Some(*candidate) == selected)
            .map_or(&self.no_alpn, |(_, config)| config)
            .clone()
    }

    /// The verified peer's SPIFFE ID in our trust domain, once the handshake is done.
    pub fn peer_identity(&self, connection: &ServerConnection) -> Option<SpiffeId> {
        let leaf = connection.peer_certificates()?.first()?;
        spiffe_id_in(leaf, &self.trust_domain)
    }
}

/// The [`Reason`] a failed server handshake ends the connection with. tokio-rustls reports
/// rustls errors as an `io::Error` of kind `InvalidData` wrapping the `rustls::Error`.
pub fn handshake_failure_reason(error: &io::Error) -> Reason {
    let Some(tls_error) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return Reason::HandshakeFailed;
    };
    match tls_error {
        rustls::Error::NoCertificatesPresented => Reason::ClientCertMissing,
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if other.0.downcast_ref::<PeerIdentityError>().is_some() =>
        {
            Reason::ClientCertWrongTrustDomain
        }
        rustls::Error::InvalidCertificate(_) => Reason::ClientCertUntrusted,
        _ => Reason::HandshakeFailed,
    }
}

/// rustls' WebPKI client verifier plus Istio's rule that the peer's SPIFFE ID is in our trust
/// domain (ztunnel does the same in `tls/workload.rs`). Chain building, expiry, EKU and the
/// handshake signatures stay with rustls.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    fn check_trust_domain(&self, end_entity: &CertificateDer<'_>) -> Result<(), PeerIdentityError> {
        let ids = spiffe_ids_of(end_entity);
        if ids.iter().any(|id| id.trust_domain == self.trust_domain) {
            return Ok(());
        }
        match ids.into_iter().next() {
            Some(found) => Err(PeerIdentityError::WrongTrustDomain {
                found,
                expected: self.trust_domain.clone(),
            }),
            None => Err(PeerIdentityError::NoSpiffeId),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        self.check_trust_domain(end_entity)
            .map_err(|error| rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error)))))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(error: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn handshake_errors_map_to_reasons() {
        let wrong_domain = PeerIdentityError::NoSpiffeId;
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
            (
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong_domain)))),
                Reason::ClientCertWrongTrustDomain,
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
