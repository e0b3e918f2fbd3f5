//! Workload credentials from disk: certificate chain, private key and mesh roots, checked
//! (supported key type and size, key matches certificate, roots usable) so that a bad file is
//! refused at load time with the file's name, never at the first handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::identity::{not_after, spiffe_ids_of, SpiffeId};

/// File names of Istio's `/etc/certs` and `workload-spiffe-credentials` layouts.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// RSA moduli below this are refused (docs/operating.md#certificates).
const MIN_RSA_BITS: usize = 2048;

/// A workload's TLS identity, validated.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Leaf first, then intermediates, as sent to peers.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key together with `chain`, as rustls serves it; checked to match the leaf.
    pub key: Arc<CertifiedKey>,
    /// The mesh roots client certificates must chain to.
    pub roots: Arc<RootCertStore>,
    /// The leaf's first SPIFFE ID, shown by the admin endpoint.
    pub identity: Option<SpiffeId>,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// The leaf's notAfter: past it the proxy is not ready.
    pub not_after: SystemTime,
}

/// What is wrong with a credentials file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{path}: no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate does not parse: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: unsupported key: {reason} (use ECDSA P-256/P-384, RSA >= 2048 bits or Ed25519)")]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error("{key_path}: private key does not match the certificate in {cert_path}")]
    KeyMismatch { key_path: PathBuf, cert_path: PathBuf },
    #[error("{path}: not a usable root certificate: {source}")]
    BadRoot { path: PathBuf, source: rustls::Error },
}

impl Credentials {
    /// Loads Istio's directory layout: `cert-chain.pem`, `key.pem`, `root-cert.pem`.
    pub fn load_dir(dir: &Path) -> Result<Self, CredentialsError> {
        Self::load_files(
            &dir.join(CERT_CHAIN_FILE),
            &dir.join(KEY_FILE),
            &dir.join(ROOT_CERT_FILE),
        )
    }

    /// Loads a certificate chain, its private key and the mesh root(s) from three PEM files.
    pub fn load_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, CredentialsError> {
        let provider = super::provider();
        let chain = read_certificates(cert)?;
        let leaf = chain
            .first()
            .ok_or_else(|| CredentialsError::NoCertificate { path: cert.into() })?;
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| CredentialsError::BadCertificate {
            path: cert.into(),
            reason: e.to_string(),
        })?;
        check_key_type(parsed.public_key()).map_err(|reason| CredentialsError::UnsupportedKey {
            path: cert.into(),
            reason,
        })?;

        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| CredentialsError::Pem {
            path: key.into(),
            source,
        })?;
        let signing_key =
            provider
                .key_provider
                .load_private_key(key_der)
                .map_err(|e| CredentialsError::UnsupportedKey {
                    path: key.into(),
                    reason: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        certified.keys_match().map_err(|_| CredentialsError::KeyMismatch {
            key_path: key.into(),
            cert_path: cert.into(),
        })?;

        Ok(Credentials::new(&parsed, Arc::new(certified), load_roots(ca)?))
    }

    /// Credentials from a checked key and chain (`key.cert`, leaf first, parsed as `leaf`) and
    /// the roots clients must chain to.
    pub fn new(leaf: &X509Certificate<'_>, key: Arc<CertifiedKey>, roots: Arc<RootCertStore>) -> Self {
        Credentials {
            identity: key.cert.first().and_then(|der| spiffe_ids_of(der).into_iter().next()),
            serial: serial_of(leaf),
            not_after: not_after(leaf),
            chain: key.cert.clone(),
            key,
            roots,
        }
    }
}

/// A certificate's serial number, lowercase hex, as logs, `/config_dump` and metrics show it.
pub fn serial_of(cert: &X509Certificate<'_>) -> String {
    cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the mesh root(s) from a PEM file: at least one certificate, each usable as a trust
/// anchor.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, CredentialsError> {
    let mut roots = RootCertStore::empty();
    for root in read_certificates(path)? {
        roots.add(root).map_err(|source| CredentialsError::BadRoot {
            path: path.into(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let pem_error = |source| CredentialsError::Pem {
        path: path.into(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(CredentialsError::NoCertificate { path: path.into() });
    }
    Ok(chain)
}

/// Accepts ECDSA on P-256/P-384, RSA of at least 2048 bits, and Ed25519; says why otherwise.
fn check_key_type(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 || curve == OID_NIST_EC_P384 => Ok(()),
            Some(curve) => Err(format!("ECDSA on curve {curve}")),
            None => Err("ECDSA without a named curve".into()),
        };
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa_modulus_bits(rsa.modulus);
            if bits >= MIN_RSA_BITS {
                Ok(())
            } else {
                Err(format!("RSA key of {bits} bits"))
            }
        }
        _ => Err(format!("key algorithm {algorithm}")),
    }
}

/// The bit length of a DER INTEGER's magnitude (leading zero bytes do not count).
fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let significant = modulus.iter().position(|b| *b != 0).map_or(&[][..], |i| &modulus[i..]);
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Duration;

    use rustls::server::WebPkiClientVerifier;

    use super::*;
    use crate::certs::{DevCa, KeyAlgorithm};

    const HOUR: Duration = Duration::from_secs(3600);

    /// A fresh directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("peerguard-credentials-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn id() -> SpiffeId {
        SpiffeId::new("cluster.local", "default", "app").unwrap()
    }

    #[test]
    fn modulus_bits_ignore_the_sign_byte() {
        assert_eq!(rsa_modulus_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_modulus_bits(&[0x01, 0xff]), 9);
        assert_eq!(rsa_modulus_bits(&[]), 0);
        assert_eq!(rsa_modulus_bits(&[0, 0]), 0);
    }

    #[test]
    fn issued_certificates_of_every_algorithm_load() {
        let scratch = Scratch::new("algorithms");
        let ca = DevCa::generate().unwrap();
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Ed25519] {
            let dir = scratch.0.join(format!("{algorithm:?}"));
            ca.issue_workload_with(&id(), HOUR, algorithm)
                .unwrap()
                .write_cert_dir(&dir)
                .unwrap();
            let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{algorithm:?}");

            let credentials = Credentials::load_dir(&dir).unwrap();
            assert_eq!(credentials.identity, Some(id()));
            assert!(!credentials.serial.is_empty() && credentials.serial.bytes().all(|b| b.is_ascii_hexdigit()));
            let now = SystemTime::now();
            assert!(now <= credentials.not_after, "not expired now");
            assert!(now + 2 * HOUR > credentials.not_after, "expired in two hours");
        }
    }

    #[test]
    fn a_saved_ca_reloads_and_issues_certificates_that_chain_to_it() {
        let scratch = Scratch::new("ca-reload");
        let original = DevCa::generate().unwrap();
        original.save(&scratch.0.join("ca")).unwrap();
        let reloaded = DevCa::load_or_create(&scratch.0.join("ca")).unwrap();
        assert_eq!(reloaded.cert_pem(), original.cert_pem());

        let leaf = reloaded.issue_workload(&id(), HOUR).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(original.cert_der().clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .unwrap();
        verifier
            .verify_client_cert(&leaf.cert_der, &[], rustls_pki_types::UnixTime::now())
            .unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let scratch = Scratch::new("mismatch");
        let ca = DevCa::generate().unwrap();
        let dir = scratch.0.join("a");
        ca.issue_workload(&id(), HOUR).unwrap().write_cert_dir(&dir).unwrap();
        let other = scratch.0.join("b");
        ca.issue_workload(&id(), HOUR).unwrap().write_cert_dir(&other).unwrap();

        let error = Credentials::load_files(
            &dir.join(CERT_CHAIN_FILE),
            &other.join(KEY_FILE),
            &dir.join(ROOT_CERT_FILE),
        )
        .unwrap_err();
        assert!(matches!(error, CredentialsError::KeyMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("b/key.pem") && message.contains("a/cert-chain.pem"),
            "{message}"
        );
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let scratch = Scratch::new("missing");
        let error = Credentials::load_dir(&scratch.0).unwrap_err();
        assert!(error.to_string().contains("cert-chain.pem"), "{error}");

        std::fs::write(scratch.0.join(CERT_CHAIN_FILE), "no pem here\n").unwrap();
        let error = Credentials::load_dir(&scratch.0).unwrap_err();
        assert!(matches!(error, CredentialsError::NoCertificate { .. }), "{error}");
    }

    /// A self-signed RSA certificate of `bits` made by the real openssl.
    fn openssl_rsa(dir: &Path, bits: u32) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("rsa{bits}.pem")), dir.join(format!("rsa{bits}.key")));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                &format!("rsa:{bits}"),
                "-nodes",
                "-days",
                "1",
            ])
            .args(["-subj", "/CN=rsa", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success());
        (cert, key)
    }

    #[test]
    fn rsa_needs_at_least_2048_bits() {
        let scratch = Scratch::new("rsa");
        let (cert, key) = openssl_rsa(&scratch.0, 2048);
        Credentials::load_files(&cert, &key, &cert).unwrap();

        let (cert, key) = openssl_rsa(&scratch.0, 1024);
        let error = Credentials::load_files(&cert, &key, &cert).unwrap_err();
        assert!(matches!(error, CredentialsError::UnsupportedKey { .. }), "{error}");
        assert!(error.to_string().contains("RSA key of 1024 bits"), "{error}");
    }
}
