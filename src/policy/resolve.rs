//! Modern resolution (docs/policy.md#peerauthentication and #the-http-alpn-annotation), the
//! rules of Istio's `ComposePeerAuthentication`.
//!
//! Pure: the PeerAuthentications and the workload in, the winner at each level out.

use std::collections::BTreeSet;

use crate::policy::document::selects;
use crate::policy::peer_authentication::PeerAuthentication;
use crate::policy::{MtlsMode, PolicyLevel, PolicySource, PortPolicy, Workload};

/// The one policy used at each level for a workload (nothing is merged between policies).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels<'a> {
    mesh: Option<&'a PeerAuthentication>,
    namespace: Option<&'a PeerAuthentication>,
    workload: Option<&'a PeerAuthentication>,
}

impl<'a> Levels<'a> {
    pub fn select(policies: &'a [PeerAuthentication], workload: &Workload) -> Self {
        let winner = |level: PolicyLevel| {
            policies
                .iter()
                .filter(|policy| level_of(policy, workload) == Some(level))
                .min_by(|a, b| a.meta.precedence().cmp(&b.meta.precedence()))
        };
        Levels {
            mesh: winner(PolicyLevel::Mesh),
            namespace: winner(PolicyLevel::Namespace),
            workload: winner(PolicyLevel::Workload),
        }
    }

    /// Whether any PeerAuthentication applies to the workload, at any level.
    pub fn apply(&self) -> bool {
        self.mesh.is_some() || self.namespace.is_some() || self.workload.is_some()
    }

    /// Start at PERMISSIVE; each level that is not UNSET overrides, the narrowest last.
    pub fn resolve(&self, port: u16) -> PortPolicy {
        let mut mode = MtlsMode::Permissive;
        let mut source = None;
        let levels = [
            (PolicyLevel::Mesh, self.mesh),
            (PolicyLevel::Namespace, self.namespace),
            (PolicyLevel::Workload, self.workload),
        ];
        for (level, policy) in levels {
            if let Some((policy, set)) = policy.and_then(|p| p.mode.map(|m| (p, m))) {
                mode = set;
                source = Some(PolicySource::of(&policy.meta, level));
            }
        }
        if let Some(workload) = self.workload {
            if let Some(Some(set)) = workload.port_level.get(&port) {
                mode = *set;
                source = Some(PolicySource::of(&workload.meta, PolicyLevel::Port));
            }
        }
        // The annotation only changes which ALPNs mark a mesh peer, which only PERMISSIVE asks.
        let annotation = [self.workload, self.namespace]
            .into_iter()
            .flatten()
            .find_map(|policy| policy.http_alpn);
        PortPolicy {
            port,
            mode,
            source,
            http_alpn: mode == MtlsMode::Permissive && annotation == Some(true),
        }
    }

    /// Ports the workload policy names in `portLevelMtls`.
    pub fn known_ports(&self) -> BTreeSet<u16> {
        self.workload
            .map(|policy| policy.port_level.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// Which level a policy is at for this workload, or `None` if it does not apply. A policy with
/// a selector in the root namespace is ignored, as Istio's code does.
fn level_of(policy: &PeerAuthentication, workload: &Workload) -> Option<PolicyLevel> {
    let namespace = &policy.meta.namespace;
    let in_root = *namespace == workload.root_namespace;
    let in_own = *namespace == workload.namespace;
    match (policy.selector.is_empty(), in_root, in_own) {
        (true, true, _) => Some(PolicyLevel::Mesh),
        (true, false, true) => Some(PolicyLevel::Namespace),
        (false, false, true) if selects(&policy.selector, &workload.labels) => Some(PolicyLevel::Workload),
        _ => None,
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
