//! The policy engine: which mTLS mode holds on a workload port, and which policy set it.
//!
//! Layout:
//! - `parse`: YAML text (+ source name) -> typed, validated documents, errors naming file,
//!   document index, kind/namespace/name and field path.
//! - `resolve`: modern PeerAuthentication resolution (mesh -> namespace -> workload -> port).
//! - `legacy`: v1alpha1 MeshPolicy/Policy and the Istio 0.3 Service annotation.

use std::collections::BTreeMap;

use serde::Serialize;

/// An effective mTLS mode (UNSET exists only inside policies; it never comes out of resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub const ALL: [MtlsMode; 3] = [MtlsMode::Disable, MtlsMode::Permissive, MtlsMode::Strict];

    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

/// The one workload this proxy fronts (PRODUCT.md §1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub root_namespace: String,
}
