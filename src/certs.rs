//! A development mesh CA (`peerguard certs`, the demo and the tests): a self-signed CA that
//! issues Istio-style workload certificates, written in the `--cert-dir` layout.
//!
//! Not for production: the CA key sits in a plain file. It exists so that a sandbox or a test
//! gets a real PKI in milliseconds without openssl scripts.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::tls::credentials::{CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};
use crate::tls::identity::SpiffeId;

pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long a generated CA is valid: long enough that a saved dev CA outlives its users.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this far in the past, so a peer whose clock lags a little accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The key algorithm of an issued workload certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &PKCS_ED25519,
        }
    }
}

/// What went wrong making or storing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a usable CA: {source}")]
    LoadCa { path: PathBuf, source: rcgen::Error },
    #[error("validity of {0:?} is out of range")]
    Validity(Duration),
    #[error("{} already holds {}: pass --force to overwrite them", dir.display(), files.join(", "))]
    WouldOverwrite { dir: PathBuf, files: Vec<&'static str> },
    #[error("the CSR does not parse: {0}")]
    Csr(rcgen::Error),
    #[error("the CSR must ask for exactly one SAN, an Istio SPIFFE ID; it asks for {0}")]
    CsrNames(String),
}

/// A self-signed mesh CA that can issue workload certificates.
pub struct DevCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A workload certificate and its key, with the root that issued it.
pub struct IssuedCert {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pem: String,
    pub root_pem: String,
}

impl DevCa {
    /// A fresh ECDSA P-256 CA, valid for ten years.
    pub fn generate() -> Result<Self, CertsError> {
        Self::generate_named("peerguard development mesh CA")
    }

    /// Like [`DevCa::generate`], with `common_name` as the CA's name: where two CAs meet (the
    /// mesh's and an app's own), different names tell them apart in openssl's output.
    pub fn generate_named(common_name: &str) -> Result<Self, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "peerguard");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity_window(CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads `ca-cert.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CertsError::LoadCa { path: key_path, source })?;
        let load_error = |source| CertsError::LoadCa {
            path: cert_path.clone(),
            source,
        };
        let cert_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| load_error(rcgen::Error::CouldNotParseCertificate))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(load_error)?;
        Ok(DevCa {
            cert_pem,
            cert_der,
            key_pem,
            issuer,
        })
    }

    /// `load(dir)` if the CA is there, else a new CA saved to `dir`.
    pub fn load_or_create(dir: &Path) -> Result<Self, CertsError> {
        if dir.join(CA_CERT_FILE).exists() {
            return Self::load(dir);
        }
        let ca = Self::generate()?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes `ca-cert.pem` and `ca-key.pem` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), CertsError> {
        create_dir(dir)?;
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, 0o644)?;
        write_file(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// An ECDSA P-256 workload certificate for `spiffe`, valid from now for `validity`.
    pub fn issue_workload(&self, spiffe: &SpiffeId, validity: Duration) -> Result<IssuedCert, CertsError> {
        self.issue_workload_with(spiffe, validity, KeyAlgorithm::default())
    }

    /// Like [`DevCa::issue_workload`] with a chosen key algorithm. The leaf looks like Istio's:
    /// empty subject, the SPIFFE ID as its only SAN, usable as TLS client and server.
    pub fn issue_workload_with(
        &self,
        spiffe: &SpiffeId,
        validity: Duration,
        algorithm: KeyAlgorithm,
    ) -> Result<IssuedCert, CertsError> {
        self.issue(vec![SanType::URI(spiffe.to_string().try_into()?)], validity, algorithm)
    }

    /// A plain server certificate for host names and IP addresses: what an application serves
    /// as its own TLS, from a CA that is not the mesh's.
    pub fn issue_server(&self, names: &[&str], validity: Duration) -> Result<IssuedCert, CertsError> {
        let sans = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*name).try_into()?)),
            })
            .collect::<Result<Vec<_>, CertsError>>()?;
        self.issue(sans, validity, KeyAlgorithm::default())
    }

    /// Signs a workload CSR as a mesh CA does: the certificate is for the CSR's key, with its one
    /// SPIFFE ID as the only SAN, valid from now for `validity`. Everything else the CSR asks
    /// for is ignored. Returns the leaf (PEM) and the identity it carries.
    pub fn sign_csr(&self, csr_pem: &str, validity: Duration) -> Result<(String, SpiffeId), CertsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertsError::Csr)?;
        let asked = san_texts(&csr);
        let id = match asked.as_slice() {
            [one] => one
                .parse::<SpiffeId>()
                .map_err(|e| CertsError::CsrNames(e.to_string()))?,
            _ => return Err(CertsError::CsrNames(format!("{asked:?}"))),
        };
        csr.params = workload_params(vec![SanType::URI(id.to_string().try_into()?)], validity)?;
        Ok((csr.signed_by(&self.issuer)?.pem(), id))
    }

    fn issue(&self, sans: Vec<SanType>, validity: Duration, algorithm: KeyAlgorithm) -> Result<IssuedCert, CertsError> {
        let key = KeyPair::generate_for(algorithm.rcgen())?;
        let params = workload_params(sans, validity)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            root_pem: self.cert_pem.clone(),
        })
    }
}

impl IssuedCert {
    /// Writes `cert-chain.pem`, `key.pem` (mode 0600) and `root-cert.pem` into `dir`: the layout
    /// `peerguard run --cert-dir` and Istio's `/etc/certs` use.
    pub fn write_cert_dir(&self, dir: &Path) -> Result<(), CertsError> {
        create_dir(dir)?;
        write_file(&dir.join(CERT_CHAIN_FILE), &self.cert_pem, 0o644)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(ROOT_CERT_FILE), &self.root_pem, 0o644)
    }
}

/// `peerguard certs`: issue a workload certificate into `--out`, from the CA in `--ca-dir`
/// (created there if missing) or from a throwaway CA.
pub fn run(args: &crate::cli::CertsArgs) -> anyhow::Result<()> {
    let spiffe: SpiffeId = args.spiffe.parse()?;
    let ca = match &args.ca_dir {
        Some(dir) => DevCa::load_or_create(dir)?,
        None => DevCa::generate()?,
    };
    if !args.force {
        refuse_to_overwrite(&args.out)?;
    }
    let issued = ca.issue_workload(&spiffe, args.validity)?;
    issued.write_cert_dir(&args.out)?;
    println!(
        "wrote {} ({}, {}, {}) for {spiffe}, valid for {:?}",
        args.out.display(),
        CERT_CHAIN_FILE,
        KEY_FILE,
        ROOT_CERT_FILE,
        args.validity
    );
    match &args.ca_dir {
        Some(dir) => println!("CA: {}", dir.display()),
        None => println!("CA: throwaway (its key was not kept; pass --ca-dir to issue more from one CA)"),
    }
    Ok(())
}

/// A workload's key is not something to lose to a repeated command: refuse when `dir` already
/// holds any of the files `write_cert_dir` writes.
fn refuse_to_overwrite(dir: &Path) -> Result<(), CertsError> {
    let files: Vec<&'static str> = [CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE]
        .into_iter()
        .filter(|file| dir.join(file).exists())
        .collect();
    if files.is_empty() {
        Ok(())
    } else {
        Err(CertsError::WouldOverwrite { dir: dir.into(), files })
    }
}

/// The SANs a CSR asks for, as text: URIs as they are, other kinds described.
pub fn csr_names(csr_pem: &str) -> Result<Vec<String>, CertsError> {
    Ok(san_texts(
        &CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertsError::Csr)?,
    ))
}

fn san_texts(csr: &CertificateSigningRequestParams) -> Vec<String> {
    csr.params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::URI(uri) => uri.as_str().to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// An issued leaf as Istio makes them: empty subject, `sans`, usable as TLS client and server.
fn workload_params(sans: Vec<SanType>, validity: Duration) -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity_window(validity)?;
    Ok(params)
}

/// (now - BACKDATE, now + validity), or an error if that is beyond what `time` represents.
fn validity_window(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CertsError> {
    let now = OffsetDateTime::now_utc();
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|v| now.checked_add(v))
        .ok_or(CertsError::Validity(validity))?;
    Ok((now - BACKDATE, not_after))
}

fn read(path: &Path) -> Result<String, CertsError> {
    fs::read_to_string(path).map_err(|source| CertsError::Io {
        path: path.into(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.into(),
        source,
    })
}

/// Writes `contents` with `mode`; the mode is set on creation and again after, so a key file
/// that already existed with looser permissions is tightened too.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let io_error = |source| CertsError::Io {
        path: path.into(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_error)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error)?;
    file.write_all(contents.as_bytes()).map_err(io_error)
}
