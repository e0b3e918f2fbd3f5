//! Throwaway PKI for one harness run, from peerguard's own `DevCa`: the mesh CA with the
//! workload's certificate (in peerguard's `--cert-dir` layout and in the peers' formats)
//! and a mesh client's; a separate CA for the app's own TLS; and the rustls configs the load
//! generator and the app use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use peerguard::certs::{DevCa, IssuedCert};
use peerguard::tls::identity::{spiffe_id_in, SpiffeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, CipherSuite, ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig};

const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "bench";
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Everything TLS in one run.
pub struct Pki {
    /// peerguard's `--cert-dir`.
    pub proxy_cert_dir: PathBuf,
    /// The peers' certificates: HAProxy's `server.pem` (cert + CA + key), nginx's `server.crt`
    /// (cert + CA, as HAProxy sends) and `server.key`, and both's `ca.crt`.
    pub peer_cert_dir: PathBuf,
    /// A mesh client: ALPN `istio`, a mesh certificate, and no resumption, so every
    /// connection is a full handshake.
    pub mesh_client: Arc<ClientConfig>,
    /// A plain client of the app's own TLS: ALPN `h2`, trusts the app's CA only.
    pub app_client: Arc<ClientConfig>,
    /// The app's own TLS server.
    pub app_server: Arc<ServerConfig>,
}

impl Pki {
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        let mesh = DevCa::generate()?;
        let id = |sa: &str| SpiffeId::new(TRUST_DOMAIN, NAMESPACE, sa);
        let workload = mesh.issue_workload(&id("app")?, VALIDITY)?;
        let client = mesh.issue_workload(&id("client")?, VALIDITY)?;
        let app_ca = DevCa::generate()?;
        let app_tls = app_ca.issue_server(&["127.0.0.1"], VALIDITY)?;

        let proxy_cert_dir = dir.join("proxy-certs");
        workload.write_cert_dir(&proxy_cert_dir)?;
        let peer_cert_dir = dir.join("peer-certs");
        std::fs::create_dir_all(&peer_cert_dir)?;
        let chain = format!("{}{}", workload.cert_pem, workload.root_pem);
        std::fs::write(peer_cert_dir.join("server.pem"), format!("{chain}{}", workload.key_pem))?;
        std::fs::write(peer_cert_dir.join("server.crt"), chain)?;
        std::fs::write(peer_cert_dir.join("server.key"), &workload.key_pem)?;
        std::fs::write(peer_cert_dir.join("ca.crt"), mesh.cert_pem())?;

        let mut mesh_client =
            client_builder(&mesh)?.with_client_auth_cert(vec![client.cert_der.clone()], key_of(&client)?)?;
        mesh_client.alpn_protocols = vec![b"istio".to_vec()];
        mesh_client.resumption = Resumption::disabled();

        let mut app_client = client_builder(&app_ca)?.with_no_client_auth();
        app_client.alpn_protocols = vec![b"h2".to_vec()];

        let mut app_server = ServerConfig::builder_with_provider(bench_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![app_tls.cert_der.clone()], key_of(&app_tls)?)?;
        app_server.alpn_protocols = vec![b"h2".to_vec()];

        Ok(Pki {
            proxy_cert_dir,
            peer_cert_dir,
            mesh_client: Arc::new(mesh_client),
            app_client: Arc::new(app_client),
            app_server: Arc::new(app_server),
        })
    }
}

/// The name the mesh client asks for: workload certificates carry only a SPIFFE ID, which
/// `SpiffeVerifier` checks instead.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::try_from("workload.bench").expect("a valid DNS name")
}

pub fn app_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// peerguard's ring provider with TLS 1.3 AES-128-GCM first, the suite the peer figures in
/// `/work/shared/bench` were taken with (servers follow the client's order here).
fn bench_provider() -> Arc<CryptoProvider> {
    let mut provider = (*peerguard::tls::provider()).clone();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn client_builder(ca: &DevCa) -> anyhow::Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let provider = bench_provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier { webpki })))
}

fn key_of(issued: &IssuedCert) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).context("parsing an issued key")
}

/// The usual chain verification; a certificate that fails only the name check is accepted
/// when it carries a SPIFFE ID of the trust domain, as a mesh client checks its peer.
#[derive(Debug)]
struct SpiffeVerifier {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // webpki checks the chain before the name, so a name error means the chain is good.
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if spiffe_id_in(end_entity, TRUST_DOMAIN).is_some() => Ok(ServerCertVerified::assertion()),
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
