//! Where the policy comes from and how that source is doing right now: `/config_dump`'s
//! `policy.source`, and the reason readiness gives while no policy is in force yet. A source
//! updates it as it goes (an outage changes it without changing the policy).

use std::path::PathBuf;

use serde::Serialize;

/// The policy source of this process and its live state.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceStatus {
    /// `--policy` (no path: no policy, every port PERMISSIVE).
    Files { path: Option<PathBuf> },
    /// `--policy-source kubernetes`.
    Kubernetes(ClusterStatus),
}

/// The Kubernetes API as a policy source (docs/kubernetes.md#config_dump).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    /// The API server's URL.
    pub api_server: String,
    /// Every watched resource has been listed completely once; until then no policy is in force.
    pub synced: bool,
    /// `false` from the first request that could not reach the API server until one that did.
    pub reachable: bool,
    /// When the current outage began (Unix seconds).
    pub unreachable_since_unix: Option<u64>,
    /// Outages since start: the API server became unreachable this many times.
    pub outages: u64,
    /// The last error any watch reported, as logged.
    pub last_error: Option<String>,
    /// One entry per watched resource and namespace.
    pub resources: Vec<ResourceStatus>,
}

/// One watched resource in one namespace (or cluster-wide for MeshPolicy).
#[derive(Debug, Clone, Serialize)]
pub struct ResourceStatus {
    /// `peerauthentications.security.istio.io/v1`, `services/v1`.
    pub resource: String,
    /// `None` for a cluster-scoped resource.
    pub namespace: Option<String>,
    pub state: WatchState,
    /// The resourceVersion of the last change seen (`None` before any object was seen).
    pub resource_version: Option<String>,
    /// What the API server said last, when the state is not `watching`.
    pub error: Option<String>,
    /// The objects in force from this resource, and those skipped as invalid.
    pub objects: Vec<ObjectStatus>,
}

/// How far the watch of one resource has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// The first complete list has not arrived yet.
    Listing,
    /// Listed, and following changes.
    Watching,
    /// The API server does not serve the resource (its CRD is not installed): an empty set.
    NotInstalled,
    /// The service account may not list or watch it (`error` names the verb).
    Forbidden,
}

/// One object the source holds.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectStatus {
    /// `PeerAuthentication foo/finance`.
    pub object: String,
    pub resource_version: String,
    /// `None`: in force. Otherwise why it was skipped (field and problem).
    pub invalid: Option<String>,
}

impl ClusterStatus {
    /// Why no policy is in force yet: the resources still waiting for their first list, and
    /// what stops them.
    pub fn waiting_for(&self) -> String {
        let pending: Vec<String> = self
            .resources
            .iter()
            .filter(|r| matches!(r.state, WatchState::Listing | WatchState::Forbidden))
            .map(|r| {
                let place = r
                    .namespace
                    .as_deref()
                    .map_or_else(String::new, |ns| format!(" in {ns}"));
                match &r.error {
                    Some(error) => format!("{}{place} ({error})", r.resource),
                    None => format!("{}{place}", r.resource),
                }
            })
            .collect();
        if pending.is_empty() {
            format!(
                "waiting for the first complete list from the Kubernetes API server {}",
                self.api_server
            )
        } else {
            format!(
                "waiting for the first complete list from the Kubernetes API server {}: {}",
                self.api_server,
                pending.join("; ")
            )
        }
    }
}
