//! One policy generation resolved for this process's workload: what a connection reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::policy::authorization::Authorizer;
use crate::policy::{Loaded, PolicySet, PortPolicy, PortProtocol, ProtocolOverrides, ResolvedPort, Workload};

/// What one workload port resolved to: its effective mode, with what the access log says about
/// its source, and the app protocol that decides the ALPN of terminated connections.
#[derive(Debug, Clone)]
pub struct PortMode {
    /// Mode, source and annotation, as resolution gave them.
    pub policy: PortPolicy,
    /// `PeerAuthentication foo/finance (workload)`, formatted once per policy generation.
    pub label: Arc<str>,
    pub protocol: PortProtocol,
}

impl PortMode {
    fn new(resolved: ResolvedPort) -> Self {
        let label: Arc<str> = match &resolved.policy.source {
            Some(source) => format!("{source} ({})", source.level.as_str()).into(),
            None => "default (no policy applies)".into(),
        };
        PortMode {
            policy: resolved.policy,
            label,
            protocol: resolved.protocol,
        }
    }
}

/// One loaded policy generation, resolved for this process's workload.
#[derive(Debug)]
pub struct PolicySnapshot {
    pub generation: u64,
    pub workload: Workload,
    pub files: Vec<PathBuf>,
    pub loaded_at: SystemTime,
    /// Ports some applicable policy, Service or `--app-protocol` names.
    named: HashMap<u16, PortMode>,
    /// Every other port: resolution gives one answer for all ports nothing names.
    other: PortMode,
    /// The AuthorizationPolicies that apply to the workload, compiled.
    pub authorizer: Authorizer,
    /// The documents this was resolved from, kept to resolve them again for new labels.
    pub(super) set: PolicySet,
}

impl PolicySnapshot {
    /// Resolves every port the policy names up front, so a connection costs one hash lookup.
    pub fn new(
        generation: u64,
        workload: Workload,
        overrides: &ProtocolOverrides,
        trust_domain: &str,
        loaded: Loaded,
    ) -> Self {
        let ports = loaded.set.resolve_ports(&workload, overrides);
        let authorizer = loaded.set.authorizer(&workload, trust_domain);
        PolicySnapshot {
            generation,
            workload,
            files: loaded.files,
            loaded_at: SystemTime::now(),
            named: ports
                .named
                .into_iter()
                .map(|resolved| (resolved.policy.port, PortMode::new(resolved)))
                .collect(),
            other: PortMode::new(ports.other),
            authorizer,
            set: loaded.set,
        }
    }

    pub fn port(&self, port: u16) -> &PortMode {
        self.named.get(&port).unwrap_or(&self.other)
    }

    /// The named ports in order, then the mode for all other ports.
    pub fn ports(&self) -> (Vec<&PortMode>, &PortMode) {
        let mut named: Vec<&PortMode> = self.named.values().collect();
        named.sort_by_key(|m| m.policy.port);
        (named, &self.other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;

    #[test]
    fn a_legacy_mesh_policy_is_labelled_as_every_other_message_names_it() {
        let loaded = PolicySet::parse_str(
            "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\nspec: {peers: [{mtls: {}}]}\n",
            "mesh.yaml",
        )
        .unwrap();
        let workload = Workload {
            namespace: "foo".into(),
            labels: Default::default(),
            root_namespace: "istio-system".into(),
        };
        let snapshot = PolicySnapshot::new(1, workload, &ProtocolOverrides::default(), "cluster.local", loaded);
        assert_eq!(&*snapshot.port(8080).label, "MeshPolicy default (legacy_mesh)");
    }
}
