//! The rustls server side of mTLS termination (docs/connections.md#termination): configurations
//! that require a mesh client certificate with a SPIFFE ID in our trust domain, the ALPN
//! choice, and the map from a failed handshake to the connection's [`Reason`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, HandshakeKind, OtherError, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::alpn;
use super::credentials::Credentials;
use super::identity::{peer_certificate, spiffe_ids_of, SpiffeId};
use super::sessions::{Declined, HandshakeSessions, SessionStore};
use crate::policy::AppProtocol;

/// Resumable sessions kept per credentials generation: enough for the peers of one workload.
const SESSION_CACHE_ENTRIES: usize = 1024;

/// The peer of a finished handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: SpiffeId,
    /// The handshake resumed an earlier session instead of verifying the certificate anew.
    pub resumed: bool,
}

/// The four server configurations mTLS termination chooses from, one per ALPN outcome.
///
/// rustls aborts with `no_application_protocol` when its configured ALPN list and the client's
/// do not intersect, while Istio wants the handshake to go on with no ALPN (e.g. a client that
/// only offers `istio`). So instead of one config with a list, each outcome gets its own config
/// with exactly that protocol (or none), and [`TlsAcceptors::handshake`] picks by the ALPN the
/// ClientHello parser saw. All four share the verifier, the certificate and the session cache.
pub struct TlsAcceptors {
    trust_domain: String,
    by_alpn: [(&'static [u8], ServerConfig); 3],
    no_alpn: ServerConfig,
    /// Resumable sessions of this credentials generation: a rotation builds new acceptors and
    /// so a new store, which makes every peer be verified again against the new roots.
    sessions: Arc<SessionStore>,
}

/// One server handshake: the configuration it runs with, whose session storage is this
/// handshake's own view of the shared store (see `tls::sessions`).
pub struct Handshake<'a> {
    pub config: Arc<ServerConfig>,
    sessions: Arc<HandshakeSessions>,
    trust_domain: &'a str,
}

/// Why the server configuration could not be built from loaded credentials.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error("TLS protocol versions: {0}")]
    Versions(#[from] rustls::Error),
}

/// Why a finished handshake's peer is not accepted. rustls and the verifier rule each of these
/// out before a handshake finishes, so they are a second line of defence; a resumed session
/// is where they could matter, since rustls does not verify its certificate again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerRejected {
    #[error("no client certificate")]
    NoCertificate,
    #[error("the client certificate does not parse")]
    Unparsable,
    #[error("the resumed session's client certificate has expired")]
    Expired,
    #[error("the client certificate has no SPIFFE ID in the trust domain")]
    NotInTrustDomain,
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
    pub fn new(
        credentials: &Credentials,
        trust_domain: &str,
        session_lifetime: Duration,
    ) -> Result<Self, ServerConfigError> {
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
        // Stateful resumption only (rustls' default ticketer issues no stateless tickets), so
        // that every session goes through the store that bounds it; each handshake installs its
        // own view of the store (`handshake`). One TLS 1.3 ticket per handshake instead of
        // rustls' two: a sidecar peer reconnects one at a time.
        base.send_tls13_tickets = 1;
        // max_fragment_size stays None: full 16 KiB records, fewest per-record costs.

        let with_alpn = |protocol: &'static [u8]| {
            let mut config = base.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            (protocol, config)
        };
        Ok(TlsAcceptors {
            trust_domain: trust_domain.to_owned(),
            by_alpn: alpn::SELECTABLE.map(with_alpn),
            no_alpn: base,
            sessions: Arc::new(SessionStore::new(session_lifetime, SESSION_CACHE_ENTRIES)),
        })
    }

    /// Starts one handshake for a client that offered `offered` (ClientHello order) on a port
    /// whose app speaks `protocol`: the configuration with the ALPN [`alpn::select`] picks (or
    /// none), its session storage this handshake's own view of the store. The clone costs a
    /// few reference counts and small vectors, next to a handshake's public-key operations.
    pub fn handshake(&self, offered: &[Vec<u8>], protocol: AppProtocol) -> Handshake<'_> {
        let sessions = Arc::new(HandshakeSessions::new(self.sessions.clone()));
        let mut config = self.config_for(offered, protocol).clone();
        config.session_storage = sessions.clone();
        Handshake {
            config: Arc::new(config),
            sessions,
            trust_domain: &self.trust_domain,
        }
    }

    fn config_for(&self, offered: &[Vec<u8>], protocol: AppProtocol) -> &ServerConfig {
        let selected = alpn::select(offered, protocol);
        self.by_alpn
            .iter()
            .find(|(candidate, _)| Some(*candidate) == selected)
            .map_or(&self.no_alpn, |(_, config)| config)
    }
}

impl Handshake<'_> {
    /// A resumption this handshake asked for and was refused (rustls then verified the
    /// certificate in a full handshake).
    pub fn declined(&self) -> Option<Declined> {
        self.sessions.declined()
    }

    /// After rustls finished: the peer, and its session made resumable within its bounds. A
    /// resumed session's certificate was verified by an earlier handshake; the store only hands
    /// out sessions whose certificate has not expired since, and this checks it once more.
    pub fn finish(&self, connection: &CommonState) -> Result<Peer, PeerRejected> {
        let leaf = connection
            .peer_certificates()
            .and_then(<[_]>::first)
            .ok_or(PeerRejected::NoCertificate)?;
        let certificate = peer_certificate(leaf, self.trust_domain).ok_or(PeerRejected::Unparsable)?;
        let resumed = connection.handshake_kind() == Some(HandshakeKind::Resumed);
        if resumed && SystemTime::now() > certificate.not_after {
            return Err(PeerRejected::Expired);
        }
        let id = certificate.id.ok_or(PeerRejected::NotInTrustDomain)?;
        self.sessions.finish(certificate.not_after);
        Ok(Peer { id, resumed })
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

/// A chain that fails on a signature was issued by a CA that merely shares a trusted root's name
/// (webpki tries the issuer by name, then its key): an unknown issuer, not a broken signature.
/// Saying so keeps `BadSignature` for the CertificateVerify alone, so the two get their own
/// reasons, and the client hears `unknown_ca`, exactly as from a CA with any other name.
fn chain_error(error: rustls::Error) -> rustls::Error {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        }
        other => other,
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
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(chain_error)?;
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
