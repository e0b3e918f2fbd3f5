//! Legacy resolution (docs/policy.md#legacy-formats): v1alpha1 MeshPolicy/Policy and the Istio
//! 0.3 Service annotation, as Istio 1.1-1.4 applied them. Pure.
//!
//! The most specific policy replaces the others (no inheritance): a targeted `Policy` beats the
//! namespace-wide `Policy`, which beats the `MeshPolicy` named `default`; any of them beats an
//! annotation. A port none of them covers accepts plaintext only (DISABLE).

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::legacy_policy::{LegacyPolicy, DEFAULT_POLICY_NAME};
use crate::policy::service::Service;
use crate::policy::{MtlsMode, PolicyLevel, PolicySource, PortPolicy, Workload};

/// The legacy documents that apply to one workload.
#[derive(Debug)]
pub(crate) struct LegacyView<'a> {
    /// Targeted policies naming a Service that selects the workload, in precedence order.
    targeted: Vec<(&'a LegacyPolicy, Coverage)>,
    namespace_wide: Option<&'a LegacyPolicy>,
    mesh: Option<&'a LegacyPolicy>,
    /// Annotated Services selecting the workload, in precedence order.
    annotated: Vec<&'a Service>,
}

/// Which workload ports a targeted policy covers.
#[derive(Debug, PartialEq, Eq)]
enum Coverage {
    /// A target without `ports`: the whole workload.
    Workload,
    Ports(BTreeSet<u16>),
}

impl Coverage {
    fn covers(&self, port: u16) -> bool {
        match self {
            Coverage::Workload => true,
            Coverage::Ports(ports) => ports.contains(&port),
        }
    }
}

impl<'a> LegacyView<'a> {
    /// The legacy documents for `workload`, or `None` when none applies to it. Applying means:
    /// the `default` MeshPolicy exists; or a Policy in the workload's namespace has no targets;
    /// or one targets a Service that selects the workload (whichever ports it names); or a
    /// Service that selects the workload has an `auth.istio.io/*` annotation of NONE or
    /// MUTUAL_TLS on a mapped port (INHERIT has no opinion, so it does not make a workload legacy).
    pub fn select(policies: &'a [LegacyPolicy], services: &'a [Service], workload: &Workload) -> Option<Self> {
        let selecting: Vec<&Service> = services.iter().filter(|s| s.selects(workload)).collect();
        let in_namespace = |policy: &&LegacyPolicy| policy.meta.namespace == workload.namespace;

        let mut targeted: Vec<(&LegacyPolicy, Coverage)> = policies
            .iter()
            .filter(in_namespace)
            .filter_map(|policy| coverage(policy, &selecting).map(|c| (policy, c)))
            .collect();
        targeted.sort_by(|(a, _), (b, _)| a.meta.precedence().cmp(&b.meta.precedence()));

        // `default` is the valid name; others were refused by Istio's validation (warned at load).
        let namespace_wide = policies
            .iter()
            .filter(in_namespace)
            .filter(|policy| policy.is_namespace_wide())
            .min_by_key(|policy| (policy.meta.name != DEFAULT_POLICY_NAME, policy.meta.precedence()));
        let mesh = policies.iter().find(|policy| policy.is_mesh_default());

        let mut annotated: Vec<&Service> = selecting.into_iter().filter(|s| !s.annotated.is_empty()).collect();
        annotated.sort_by(|a, b| a.meta.precedence().cmp(&b.meta.precedence()));

        let applies = !targeted.is_empty() || !annotated.is_empty() || namespace_wide.is_some() || mesh.is_some();
        applies.then_some(LegacyView {
            targeted,
            namespace_wide,
            mesh,
            annotated,
        })
    }

    pub fn resolve(&self, port: u16) -> PortPolicy {
        let policies = [
            (
                self.targeted.iter().find(|(_, c)| c.covers(port)).map(|(p, _)| *p),
                PolicyLevel::LegacyService,
            ),
            (self.namespace_wide, PolicyLevel::LegacyNamespace),
            (self.mesh, PolicyLevel::LegacyMesh),
        ];
        let from_policy = policies
            .into_iter()
            .find_map(|(policy, level)| policy.map(|p| (p.mode, PolicySource::of(&p.meta, level))));
        let from_annotation = || {
            self.annotated.iter().find_map(|service| {
                let mode = service.annotated.get(&port)?;
                Some((*mode, PolicySource::of(&service.meta, PolicyLevel::ServiceAnnotation)))
            })
        };
        // No policy sets the mode of a port none covers: DISABLE is the era's default, so the
        // source is `None`, as for the modern default (istioctl's tls-check showed `-` there).
        let (mode, source) = match from_policy.or_else(from_annotation) {
            Some((mode, source)) => (mode, Some(source)),
            None => (MtlsMode::Disable, None),
        };
        PortPolicy {
            port,
            mode,
            source,
            http_alpn: false,
        }
    }

    /// Ports a targeted policy or an annotation names.
    pub fn known_ports(&self) -> BTreeSet<u16> {
        let targeted = self.targeted.iter().flat_map(|(_, coverage)| match coverage {
            Coverage::Workload => BTreeSet::new(),
            Coverage::Ports(ports) => ports.clone(),
        });
        let annotated = self.annotated.iter().flat_map(|s| s.annotated.keys().copied());
        targeted.chain(annotated).collect()
    }
}

/// What a targeted policy covers of a workload, through the Services that select it; `None`
/// when it targets no such Service (or has no targets).
fn coverage(policy: &LegacyPolicy, selecting: &[&Service]) -> Option<Coverage> {
    let by_name: BTreeMap<&str, &Service> = selecting.iter().map(|s| (s.meta.name.as_str(), *s)).collect();
    let mut ports = BTreeSet::new();
    let mut applies = false;
    for target in &policy.targets {
        let Some(service) = by_name.get(target.service.as_str()) else {
            continue;
        };
        if target.ports.is_empty() {
            return Some(Coverage::Workload);
        }
        applies = true;
        ports.extend(service.workload_ports(&target.ports));
    }
    applies.then_some(Coverage::Ports(ports))
}

#[cfg(test)]
#[path = "legacy_tests.rs"]
mod tests;
