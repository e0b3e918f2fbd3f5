//! One issuance: read the token and the roots, make a key and CSR, call `CreateCertificate`
//! with the token and cluster ID, check the chain. Every failure names the CA address and, for
//! an answer from the CA, its gRPC status.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use super::chain::{self, Accepted, ChainRefused};
use super::connect::{self, ConnectError};
use super::csr::{self, CsrError};
use super::proto::{self, IstioCertificateRequest};
use crate::config::MeshCaConfig;
use crate::tls::credentials::{load_roots, CredentialsError};

/// The gRPC metadata key of the cluster ID (Istio's agent sends `ClusterID`; HTTP/2 lowercases it).
pub const CLUSTER_ID_KEY: &str = "clusterid";

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot read the CA token {}: {source}", path.display())]
    Token { path: PathBuf, source: std::io::Error },
    #[error("the CA token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("--ca-root-cert: {0}")]
    Roots(CredentialsError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("cannot reach the mesh CA at {address}: {detail}")]
    Unreachable { address: String, detail: String },
    #[error(
        "the mesh CA at {address} is not trusted: {detail} (its certificate must chain to --ca-root-cert {} \
         and name {server_name})", roots.display()
    )]
    Untrusted {
        address: String,
        detail: String,
        roots: PathBuf,
        server_name: String,
    },
    #[error("the mesh CA at {address} did not answer within {after:?}")]
    NoAnswer { address: String, after: Duration },
    #[error("the mesh CA at {address} rejected the token from {}: gRPC status {}: {}", token_file.display(), code_name(status.code()), status.message())]
    TokenRejected {
        address: String,
        token_file: PathBuf,
        status: Status,
    },
    #[error("the mesh CA at {address} refused the certificate request: gRPC status {}: {}", code_name(status.code()), status.message())]
    CsrRefused { address: String, status: Status },
    #[error("the mesh CA at {address} failed the request: gRPC status {}: {}", code_name(status.code()), status.message())]
    Status { address: String, status: Status },
    #[error("the chain from the mesh CA at {address} was refused: {reason}")]
    Refused { address: String, reason: ChainRefused },
}

/// gRPC's canonical upper-case name of a status code, as grpc-go and istiod logs print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Asks the CA for a new certificate and checks it. The whole attempt, connecting included,
/// is bounded by `config.request_timeout`.
pub async fn issue(config: &MeshCaConfig) -> Result<Accepted, IssueError> {
    let token = read_token(config).await?;
    let roots = load_roots(&config.root_cert).map_err(IssueError::Roots)?;
    let made = csr::generate(config.key_type, &config.identity)?;
    let mut request = Request::new(IstioCertificateRequest {
        csr: made.csr_pem,
        validity_duration: i64::try_from(config.cert_ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let headers = request.metadata_mut();
    // Both come from files and flags: a value that is not valid header text is refused as a
    // token or cluster ID the CA would reject anyway.
    let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| IssueError::TokenRejected {
        address: config.address.clone(),
        token_file: config.token_file.clone(),
        status: Status::unauthenticated("the token holds characters a header cannot carry"),
    })?;
    headers.insert("authorization", bearer);
    let cluster = MetadataValue::try_from(config.cluster_id.as_str()).map_err(|_| IssueError::Status {
        address: config.address.clone(),
        status: Status::invalid_argument("--cluster-id holds characters a header cannot carry"),
    })?;
    headers.insert(CLUSTER_ID_KEY, cluster);

    let address = config.address.clone();
    let call = async {
        let channel = connect::channel(
            &config.address,
            &config.server_name,
            roots.clone(),
            config.request_timeout,
        )
        .await
        .map_err(|e| connect_failed(config, e))?;
        proto::create_certificate(channel, request)
            .await
            .map_err(|status| refused(config, status))
    };
    let response = tokio::time::timeout(config.request_timeout, call)
        .await
        .map_err(|_| IssueError::NoAnswer {
            address: address.clone(),
            after: config.request_timeout,
        })??;
    chain::accept(&response.into_inner().cert_chain, made.key, roots, &config.identity)
        .map_err(|reason| IssueError::Refused { address, reason })
}

async fn read_token(config: &MeshCaConfig) -> Result<String, IssueError> {
    let path = &config.token_file;
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| IssueError::Token {
            path: path.clone(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(IssueError::EmptyToken { path: path.clone() });
    }
    Ok(token.to_owned())
}

fn connect_failed(config: &MeshCaConfig, error: ConnectError) -> IssueError {
    let address = config.address.clone();
    match error {
        ConnectError::Untrusted(detail) => IssueError::Untrusted {
            address,
            detail,
            roots: config.root_cert.clone(),
            server_name: config.server_name.clone(),
        },
        other => IssueError::Unreachable {
            address,
            detail: other.to_string(),
        },
    }
}

/// Sorts a CA's error status by what the operator has to fix.
fn refused(config: &MeshCaConfig, status: Status) -> IssueError {
    let address = config.address.clone();
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => IssueError::TokenRejected {
            address,
            token_file: config.token_file.clone(),
            status,
        },
        Code::InvalidArgument | Code::FailedPrecondition => IssueError::CsrRefused { address, status },
        Code::Unavailable => IssueError::Unreachable {
            address,
            detail: format!("gRPC status UNAVAILABLE: {}", status.message()),
        },
        Code::DeadlineExceeded => IssueError::NoAnswer {
            address,
            after: config.request_timeout,
        },
        _ => IssueError::Status { address, status },
    }
}
