//! A fresh private key and a CSR whose only SAN is the workload's SPIFFE ID, made for every
//! certificate (the key never leaves the process and never touches a disk).

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::cli::KeyType;
use crate::tls::identity::SpiffeId;

/// RSA keys are made this big: Istio's default, and peerguard's minimum.
const RSA_BITS: usize = 2048;

/// A new key and the PEM CSR that asks for a certificate for it.
pub struct KeyAndCsr {
    pub key: PrivatePkcs8KeyDer<'static>,
    pub csr_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("making an RSA key: {0}")]
    Rsa(String),
    #[error("making the key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A key of `key_type` and a CSR for `identity`: empty subject, the SPIFFE ID as its only SAN,
/// as Istio's agent asks.
pub fn generate(key_type: KeyType, identity: &SpiffeId) -> Result<KeyAndCsr, CsrError> {
    let key = match key_type {
        KeyType::Ecdsa => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        KeyType::Rsa => {
            let pkcs8 = rsa_pkcs8()?;
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_RSA_SHA256)?
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr_pem = params.serialize_request(&key)?.pem()?;
    Ok(KeyAndCsr {
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        csr_pem,
    })
}

/// A new RSA key as PKCS#8 DER. ring signs with RSA but cannot make the keys; the `rsa` crate
/// only generates here, every signature is ring's.
fn rsa_pkcs8() -> Result<PrivatePkcs8KeyDer<'static>, CsrError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key =
        rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS).map_err(|e| CsrError::Rsa(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| CsrError::Rsa(e.to_string()))?;
    Ok(PrivatePkcs8KeyDer::from(der.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::CertificateSigningRequestParams;

    fn id() -> SpiffeId {
        SpiffeId::new("cluster.local", "default", "app").unwrap()
    }

    fn sans_of(csr_pem: &str) -> Vec<SanType> {
        CertificateSigningRequestParams::from_pem(csr_pem)
            .unwrap()
            .params
            .subject_alt_names
    }

    #[test]
    fn an_ecdsa_csr_carries_only_the_spiffe_id() {
        let made = generate(KeyType::Ecdsa, &id()).unwrap();
        assert_eq!(
            sans_of(&made.csr_pem),
            vec![SanType::URI(
                "spiffe://cluster.local/ns/default/sa/app".try_into().unwrap()
            )]
        );
        let key = KeyPair::try_from(&made.key).unwrap();
        assert!(key.is_compatible(&PKCS_ECDSA_P256_SHA256));
    }

    #[test]
    fn an_rsa_key_is_2048_bits_and_signs_its_csr() {
        let made = generate(KeyType::Rsa, &id()).unwrap();
        assert_eq!(sans_of(&made.csr_pem).len(), 1);
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::from_pkcs8_der(made.key.secret_pkcs8_der()).unwrap();
        assert_eq!(key.size() * 8, RSA_BITS);
    }
}
