//! The mesh-CA certificate source (docs/mesh-ca.md): which CA, how to authenticate to it, which
//! identity to ask for, and the timing of issuance and renewal; checked once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{KeyType, MeshCaArgs};
use crate::tls::identity::{SpiffeId, SpiffeIdError};

/// How to get the workload certificate from the mesh CA.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshCaConfig {
    /// `HOST:PORT` as given: dialled as is (a host name is resolved at each attempt).
    pub address: String,
    /// The name the CA's TLS certificate must carry: the host part of `address`.
    pub server_name: String,
    pub root_cert: PathBuf,
    pub token_file: PathBuf,
    pub cluster_id: String,
    /// The only SAN of every CSR, and what an issued leaf must carry exactly.
    pub identity: SpiffeId,
    pub key_type: KeyType,
    /// The `validity_duration` asked for.
    pub cert_ttl: Duration,
    /// The fraction of a certificate's lifetime after which it is renewed, in (0, 1).
    pub renew_ratio: f64,
    pub request_timeout: Duration,
    pub start_timeout: Duration,
}

/// A mesh-CA command line that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum MeshCaError {
    #[error("--ca-address {0:?}: expected HOST:PORT, such as istiod.istio-system.svc:15012")]
    Address(String),
    #[error(
        "--ca-address needs the workload's service account: give --service-account (env SERVICE_ACCOUNT, \
         which Istio's injector sets from the pod's spec.serviceAccountName)"
    )]
    NoServiceAccount,
    #[error("the SPIFFE ID to ask the mesh CA for is not valid: {0}")]
    Identity(#[from] SpiffeIdError),
    #[error("--renew-ratio {0}: expected a fraction between 0 and 1, such as 0.5")]
    RenewRatio(f64),
    #[error("--cert-ttl must be at least 1s")]
    CertTtl,
    #[error("--ca-request-timeout and --ca-start-timeout must be more than 0s")]
    Timeout,
}

impl MeshCaConfig {
    pub fn from_args(args: &MeshCaArgs, trust_domain: &str, namespace: &str) -> Result<Self, MeshCaError> {
        let address = args.ca_address.clone().unwrap_or_default();
        let server_name = server_name(&address).ok_or_else(|| MeshCaError::Address(address.clone()))?;
        let service_account = args.service_account.as_deref().ok_or(MeshCaError::NoServiceAccount)?;
        if !(args.renew_ratio > 0.0 && args.renew_ratio < 1.0) {
            return Err(MeshCaError::RenewRatio(args.renew_ratio));
        }
        if args.cert_ttl < Duration::from_secs(1) {
            return Err(MeshCaError::CertTtl);
        }
        if args.ca_request_timeout.is_zero() || args.ca_start_timeout.is_zero() {
            return Err(MeshCaError::Timeout);
        }
        Ok(MeshCaConfig {
            server_name,
            address,
            root_cert: args.ca_root_cert.clone(),
            token_file: args.ca_token_file.clone(),
            cluster_id: args.cluster_id.clone(),
            identity: SpiffeId::new(trust_domain, namespace, service_account)?,
            key_type: args.key_type,
            cert_ttl: args.cert_ttl,
            renew_ratio: args.renew_ratio,
            request_timeout: args.ca_request_timeout,
            start_timeout: args.ca_start_timeout,
        })
    }
}

/// The host of `HOST:PORT` or `[IPv6]:PORT`, without brackets; `None` when either part is
/// missing or the port is not a port.
fn server_name(address: &str) -> Option<String> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|port| *port != 0)?;
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_without_brackets() {
        assert_eq!(
            server_name("istiod.istio-system.svc:15012").as_deref(),
            Some("istiod.istio-system.svc")
        );
        assert_eq!(server_name("127.0.0.1:15012").as_deref(), Some("127.0.0.1"));
        assert_eq!(server_name("[::1]:15012").as_deref(), Some("::1"));
        for bad in [
            "istiod",
            "istiod:",
            ":15012",
            "istiod:0",
            "istiod:http",
            "::1:15012",
            "[::1:15012",
        ] {
            assert_eq!(server_name(bad), None, "{bad}");
        }
    }
}
