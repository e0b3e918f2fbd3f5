//! A real PKI for integration tests: a fresh mesh CA per test (so nothing ever expires), mesh,
//! foreign-CA and other-trust-domain certificates, rustls client configs, and PEM files on disk
//! for `openssl` and `curl`.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use peerguard::certs::{DevCa, IssuedCert};
use peerguard::tls::credentials::Credentials;
use peerguard::tls::identity::{spiffe_ids_of, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const VALIDITY: Duration = Duration::from_secs(3600);

/// `spiffe://cluster.local/ns/default/sa/<service_account>`.
pub fn mesh_id(service_account: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "default", service_account).expect("valid test SPIFFE ID")
}

/// A directory under the system temp dir, removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("peerguard-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The certificates one test needs: the mesh CA, a second unrelated CA, and the server's
/// own credentials issued by the mesh CA.
pub struct Pki {
    pub mesh: DevCa,
    pub foreign: DevCa,
    pub server: IssuedCert,
    pub dir: TestDir,
}

impl Pki {
    pub fn new() -> Self {
        let mesh = DevCa::generate().expect("mesh CA");
        let server = mesh.issue_workload(&mesh_id("server"), VALIDITY).expect("server cert");
        Pki {
            foreign: DevCa::generate().expect("foreign CA"),
            mesh,
            server,
            dir: TestDir::new("pki"),
        }
    }

    /// The server credentials as `peerguard run --cert-dir` would load them.
    pub fn server_credentials(&self) -> Credentials {
        let dir = self.write("server", &self.server);
        Credentials::load_dir(&dir).expect("load server credentials")
    }

    /// A client certificate of this mesh.
    pub fn mesh_client(&self) -> IssuedCert {
        self.mesh
            .issue_workload(&mesh_id("client"), VALIDITY)
            .expect("mesh client cert")
    }

    /// A certificate with a good-looking mesh SPIFFE ID from a CA the server does not trust.
    pub fn foreign_client(&self) -> IssuedCert {
        self.foreign
            .issue_workload(&mesh_id("client"), VALIDITY)
            .expect("foreign client cert")
    }

    /// A certificate from the mesh CA whose SPIFFE ID is in another trust domain.
    pub fn other_domain_client(&self) -> IssuedCert {
        let id = SpiffeId::new("other.example", "default", "client").expect("valid SPIFFE ID");
        self.mesh
            .issue_workload(&id, VALIDITY)
            .expect("other-domain client cert")
    }

    /// Writes `cert` in the `--cert-dir` layout under `<pki dir>/<name>` and returns that dir.
    pub fn write(&self, name: &str, cert: &IssuedCert) -> PathBuf {
        let dir = self.dir.path().join(name);
        cert.write_cert_dir(&dir).expect("write cert dir");
        dir
    }

    /// A rustls client trusting the mesh CA, offering `alpn`, presenting `client_cert` if any.
    pub fn client_config(&self, alpn: &[&str], client_cert: Option<&IssuedCert>) -> Arc<ClientConfig> {
        self.client_config_for_versions(alpn, client_cert, rustls::ALL_VERSIONS)
    }

    pub fn client_config_for_versions(
        &self,
        alpn: &[&str],
        client_cert: Option<&IssuedCert>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.mesh.cert_der().clone()).expect("mesh root");
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("server verifier");
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TestServerVerifier {
                mesh_chain: Some(webpki),
            }));
        finish_client_config(builder, alpn, client_cert)
    }
}

/// Completes a client configuration: the client certificate, if any, and the ALPN list.
pub fn finish_client_config(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    alpn: &[&str],
    client_cert: Option<&IssuedCert>,
) -> Arc<ClientConfig> {
    let mut config = match client_cert {
        Some(cert) => builder
            .with_client_auth_cert(
                vec![cert.cert_der.clone()],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// The name a test client asks for; mesh certificates carry no DNS name, see [`TestServerVerifier`].
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("server.default.svc.cluster.local").expect("valid DNS name")
}

/// How the test clients check a server. With a mesh chain it checks as an Istio client does:
/// the chain must verify against the mesh root and the certificate must carry a SPIFFE ID; host
/// names are not part of mesh identity (Istio certificates have none), so a name mismatch after
/// a good chain is accepted. Without one it accepts any certificate, so a test can assert
/// *whose* certificate answered (the mesh's or the app's own). Handshake signatures are always
/// checked: the server must hold its certificate's key.
#[derive(Debug)]
pub struct TestServerVerifier {
    mesh_chain: Option<Arc<WebPkiServerVerifier>>,
}

impl TestServerVerifier {
    /// Accepts any certificate (signatures still checked).
    pub fn any() -> Arc<Self> {
        Arc::new(TestServerVerifier { mesh_chain: None })
    }
}

impl ServerCertVerifier for TestServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(mesh_chain) = &self.mesh_chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match mesh_chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(verified) => Ok(verified),
            // rustls checks the chain before the name, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !spiffe_ids_of(end_entity).is_empty() => Ok(ServerCertVerified::assertion()),
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = peerguard::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = peerguard::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        peerguard::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
