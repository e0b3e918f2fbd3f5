//! What the CA returned, checked before it is served: a chain whose leaf carries exactly the
//! SPIFFE ID asked for, for the key made for it, that verifies to the mesh roots now. A refused
//! chain is never served; the caller keeps what it had.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::tls::credentials::Credentials;
use crate::tls::identity::SpiffeId;

/// Why a returned chain is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainRefused {
    #[error("the response holds no certificate")]
    Empty,
    #[error("certificate {index} of the response is not PEM: {reason}")]
    Pem { index: usize, reason: String },
    #[error("the leaf certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the leaf is for {got}, not {expected} (the only SAN asked for)")]
    WrongIdentity { expected: String, got: String },
    #[error("the chain does not verify to the mesh roots: {0}")]
    Untrusted(String),
    #[error("the leaf is not for the key peerguard made")]
    KeyMismatch,
    #[error("the key cannot sign: {0}")]
    Key(String),
}

/// A checked chain ready to serve, and the leaf's validity for scheduling its renewal.
pub struct Accepted {
    pub credentials: Credentials,
    pub not_before: std::time::SystemTime,
}

/// Checks the CA's `cert_chain` (leaf first; each entry one or more PEM certificates) for
/// `key` and `expected`, against `roots`. A trailing self-signed certificate (the root, which
/// Istio appends) is dropped from what is served: peers have the roots already.
pub fn accept(
    cert_chain: &[String],
    key: PrivatePkcs8KeyDer<'static>,
    roots: Arc<RootCertStore>,
    expected: &SpiffeId,
) -> Result<Accepted, ChainRefused> {
    let mut chain = Vec::new();
    for (index, entry) in cert_chain.iter().enumerate() {
        for cert in CertificateDer::pem_slice_iter(entry.as_bytes()) {
            chain.push(cert.map_err(|e| ChainRefused::Pem {
                index,
                reason: e.to_string(),
            })?);
        }
    }
    let leaf_der = chain.first().ok_or(ChainRefused::Empty)?.clone();
    let (_, leaf) =
        X509Certificate::from_der(leaf_der.as_ref()).map_err(|e| ChainRefused::Unparsable(e.to_string()))?;
    check_identity(&leaf, expected)?;
    if chain.len() > 1 && chain.last().is_some_and(is_self_signed) {
        chain.pop();
    }
    verify(&leaf_der, &chain[1..], &roots)?;

    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key))
        .map_err(|e| ChainRefused::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| ChainRefused::KeyMismatch)?;
    let not_before = crate::tls::identity::not_before(&leaf);
    Ok(Accepted {
        credentials: Credentials::new(&leaf, Arc::new(certified), roots),
        not_before,
    })
}

/// The leaf's SANs must be exactly one URI, the identity asked for: a CA that adds or swaps
/// names would make peerguard claim an identity it did not ask for.
fn check_identity(leaf: &X509Certificate<'_>, expected: &SpiffeId) -> Result<(), ChainRefused> {
    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().map(describe).collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(ChainRefused::Unparsable(e.to_string())),
    };
    let wanted = expected.to_string();
    if names.len() == 1 && names[0] == wanted {
        return Ok(());
    }
    Err(ChainRefused::WrongIdentity {
        expected: wanted,
        got: if names.is_empty() {
            "no SAN".into()
        } else {
            names.join(", ")
        },
    })
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(uri) => (*uri).to_owned(),
        other => other.to_string(),
    }
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(cert.as_ref()).is_ok_and(|(_, c)| c.subject() == c.issuer())
}

/// The same path validation a mesh peer does: to one of `roots`, through `intermediates`,
/// valid now, for TLS server use.
fn verify(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
) -> Result<(), ChainRefused> {
    let untrusted = |e: webpki::Error| ChainRefused::Untrusted(format!("{e:?}"));
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(untrusted)?;
    end_entity
        .verify_for_usage(
            crate::tls::provider().signature_verification_algorithms.all,
            &roots.roots,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(untrusted)
}
