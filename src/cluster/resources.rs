//! What the Kubernetes source watches, where, and in which API version the server serves it.

use kube::core::ApiResource;
use kube::Client;

use crate::policy::Workload;

/// One kind peerguard reads from the API server.
#[derive(Debug)]
pub struct WatchedKind {
    /// Empty for the core group.
    pub group: &'static str,
    /// Served versions to use, best first.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    /// Namespaced kinds are watched in the workload's and the root namespace only.
    pub namespaced: bool,
}

/// Everything the policy depends on (docs/kubernetes.md#what-is-watched). The legacy kinds are
/// read only where their CRDs are still installed.
pub const WATCHED: &[WatchedKind] = &[
    WatchedKind {
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        namespaced: true,
    },
    WatchedKind {
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        namespaced: true,
    },
    WatchedKind {
        group: "authentication.istio.io",
        versions: &["v1alpha1"],
        kind: "Policy",
        plural: "policies",
        namespaced: true,
    },
    WatchedKind {
        group: "authentication.istio.io",
        versions: &["v1alpha1"],
        kind: "MeshPolicy",
        plural: "meshpolicies",
        namespaced: false,
    },
    WatchedKind {
        group: "",
        versions: &["v1"],
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
];

impl WatchedKind {
    pub fn api_resource(&self, version: &str) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: version.to_string(),
            api_version: self.api_version(version),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }

    fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// `peerauthentications.security.istio.io`, `services`: as RBAC rules and kubectl name it.
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The version the API server serves, best first; `None` when it serves none of them (the
    /// CRD is not installed). The core group is always served.
    pub async fn served_version(&self, client: &Client) -> Result<Option<&'static str>, kube::Error> {
        if self.group.is_empty() {
            return Ok(self.versions.first().copied());
        }
        for version in self.versions {
            match client.list_api_group_resources(&self.api_version(version)).await {
                Ok(list) if list.resources.iter().any(|r| r.name == self.plural) => return Ok(Some(version)),
                Ok(_) => {}
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// One kind in one namespace (`None`: cluster-scoped).
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: &'static WatchedKind,
    pub namespace: Option<String>,
}

impl Target {
    /// The resources to watch for `workload`: each namespaced kind in its namespace and in the
    /// root namespace (once when they are the same), each cluster-scoped kind once.
    pub fn all_for(workload: &Workload) -> Vec<Target> {
        let mut namespaces = vec![workload.namespace.clone()];
        if workload.root_namespace != workload.namespace {
            namespaces.push(workload.root_namespace.clone());
        }
        WATCHED
            .iter()
            .flat_map(|kind| {
                let scopes: Vec<Option<String>> = if kind.namespaced {
                    namespaces.iter().cloned().map(Some).collect()
                } else {
                    vec![None]
                };
                scopes.into_iter().map(move |namespace| Target { kind, namespace })
            })
            .collect()
    }

    /// `peerauthentications.security.istio.io in foo`, for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} in namespace {namespace}", self.kind.resource_name()),
            None => format!("{} (cluster-wide)", self.kind.resource_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(namespace: &str, root: &str) -> Workload {
        Workload {
            namespace: namespace.into(),
            labels: Default::default(),
            root_namespace: root.into(),
        }
    }

    #[test]
    fn namespaced_kinds_are_watched_in_the_workload_and_root_namespaces_and_mesh_policy_once() {
        let targets = Target::all_for(&workload("foo", "istio-system"));
        let described: Vec<String> = targets.iter().map(Target::describe).collect();
        assert_eq!(
            described,
            [
                "peerauthentications.security.istio.io in namespace foo",
                "peerauthentications.security.istio.io in namespace istio-system",
                "authorizationpolicies.security.istio.io in namespace foo",
                "authorizationpolicies.security.istio.io in namespace istio-system",
                "policies.authentication.istio.io in namespace foo",
                "policies.authentication.istio.io in namespace istio-system",
                "meshpolicies.authentication.istio.io (cluster-wide)",
                "services in namespace foo",
                "services in namespace istio-system",
            ]
        );
        assert_eq!(Target::all_for(&workload("istio-system", "istio-system")).len(), 5);
    }

    #[test]
    fn api_resources_carry_the_group_version() {
        let resource = WATCHED[0].api_resource("v1beta1");
        assert_eq!(resource.api_version, "security.istio.io/v1beta1");
        assert_eq!(WATCHED[4].api_resource("v1").api_version, "v1");
    }
}
