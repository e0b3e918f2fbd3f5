//! The policy engine: which mTLS mode holds on a workload port, and which policy set it; and
//! which app protocol the port speaks.
//!
//! Layout:
//! - `set`: `PolicySet`, the validated documents of one load; the era decision per workload.
//! - `parse`: YAML/JSON text (+ source name) -> validated documents; `node` walks values with
//!   field paths; `document` holds what every kind shares.
//! - `peer_authentication`, `legacy_policy`, `service`: one understood kind each.
//! - `destination_rule`: DestinationRule, the client side of mTLS, and `tls-check`'s pairs.
//! - `authorization`: AuthorizationPolicy: validation, selection, compiled rules, the verdict.
//! - `resolve`: modern PeerAuthentication resolution (mesh -> namespace -> workload -> port).
//! - `legacy`: v1alpha1 MeshPolicy/Policy and the Istio 0.3 Service annotation.
//! - `protocol`: a workload port's app protocol (Services as Istio reads them, `--app-protocol`).
//! - `error`: the operator-facing errors and warnings.

pub mod authorization;
pub mod destination_rule;
mod document;
mod error;
mod legacy;
mod legacy_policy;
mod load;
mod node;
mod parse;
mod peer_authentication;
mod ports;
mod protocol;
mod resolve;
mod service;
mod set;
#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use error::{Concern, DocumentRef, PolicyError, PolicyWarning, Problem};
pub use parse::{read_api_object, ApiObject};
pub use ports::{ResolvedPort, WorkloadPorts};
pub use protocol::{parse_override, AppProtocol, ConflictingOverride, PortProtocol, ProtocolOverrides};
pub use set::{Loaded, PolicySet};

pub(crate) use node::parse_port;

/// An effective mTLS mode (UNSET exists only inside policies; it never comes out of resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

/// The one workload this proxy fronts (docs/policy.md#the-workload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub root_namespace: String,
}

/// The mode one workload port gets, and which policy set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortPolicy {
    pub port: u16,
    pub mode: MtlsMode,
    /// `None`: no policy sets a mode, so the default holds: PERMISSIVE, or DISABLE where the
    /// legacy era holds (docs/policy.md#legacy-formats).
    pub source: Option<PolicySource>,
    /// Whether standard HTTP ALPNs count as mesh markers; only ever true on PERMISSIVE ports.
    pub http_alpn: bool,
}

/// The policy that decided a port's mode, and at which level it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySource {
    pub kind: String,
    /// Empty for the cluster-scoped MeshPolicy.
    pub namespace: String,
    pub name: String,
    pub level: PolicyLevel,
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where in the precedence order a mode came from (docs/policy.md#peerauthentication and
/// #legacy-formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyLevel {
    /// PeerAuthentication in the root namespace without a selector.
    Mesh,
    /// PeerAuthentication in the workload's namespace without a selector.
    Namespace,
    /// PeerAuthentication whose selector matches the workload.
    Workload,
    /// That workload policy's `portLevelMtls` entry for the port.
    Port,
    /// The `MeshPolicy` named `default`.
    LegacyMesh,
    /// A `Policy` without targets in the workload's namespace.
    LegacyNamespace,
    /// A `Policy` whose targets name a Service that selects the workload.
    LegacyService,
    /// An Istio 0.3 `auth.istio.io/<port>` annotation on a Service that selects the workload.
    ServiceAnnotation,
}

impl PolicyLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyLevel::Mesh => "mesh",
            PolicyLevel::Namespace => "namespace",
            PolicyLevel::Workload => "workload",
            PolicyLevel::Port => "port",
            PolicyLevel::LegacyMesh => "legacy_mesh",
            PolicyLevel::LegacyNamespace => "legacy_namespace",
            PolicyLevel::LegacyService => "legacy_service",
            PolicyLevel::ServiceAnnotation => "service_annotation",
        }
    }
}

impl PolicySource {
    fn of(meta: &document::Meta, level: PolicyLevel) -> Self {
        PolicySource {
            kind: meta.kind.as_str().to_string(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            level,
        }
    }
}
