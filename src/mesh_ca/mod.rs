//! The workload certificate from the mesh CA (docs/mesh-ca.md): Istio's
//! `IstioCertificateService/CreateCertificate` over gRPC and TLS, as pilot-agent and ztunnel
//! call it (istiod, or cert-manager's istio-csr).
//!
//! - `proto`: the service's messages (prost derives, no protoc), client call and server glue.
//! - `csr`: a fresh key and a CSR for the workload's SPIFFE ID.
//! - `connect`: the TLS channel to the CA, and which step of connecting failed.
//! - `issue`: one issuance, and its errors named by CA address and gRPC status.
//! - `chain`: the returned chain checked (identity, roots, key) before it is served.
//! - `schedule`: renewal time and retry backoff (pure).
//! - `provider`: the first certificate at start-up, then renewal into the store.

mod chain;
mod connect;
mod csr;
mod issue;
pub mod proto;
mod provider;
mod schedule;

pub use chain::ChainRefused;
pub use issue::{code_name, IssueError, CLUSTER_ID_KEY};
pub use provider::{first_certificate, keep_fresh, FirstCertificateError};
