//! Legacy `MeshPolicy` and `Policy` (`authentication.istio.io/v1alpha1`, Istio 0.8–1.5).

use crate::policy::document::{FieldWarning, Kind, Meta};
use crate::policy::error::Concern;
use crate::policy::node::{child_path, FieldResult, Node};
use crate::policy::MtlsMode;

/// The only name Istio used for mesh- and namespace-wide legacy policies.
pub(crate) const DEFAULT_POLICY_NAME: &str = "default";

/// One validated v1alpha1 policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LegacyPolicy {
    pub meta: Meta,
    /// Services (in the policy's namespace) the policy is limited to; empty means namespace-
    /// or mesh-wide.
    pub targets: Vec<Target>,
    /// What `peers` amounts to: STRICT or PERMISSIVE for an `mtls` entry, DISABLE without one.
    pub mode: MtlsMode,
}

/// `spec.targets[]`: a Service, optionally limited to some of its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The Service's short name (`httpbin`, also from `httpbin.bar.svc.cluster.local`).
    pub service: String,
    /// Empty: every port of the workload the Service selects.
    pub ports: Vec<PortSelector>,
}

/// A Service port, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortSelector {
    Number(u16),
    Name(String),
}

impl LegacyPolicy {
    pub fn parse(root: &Node, meta: Meta, warnings: &mut Vec<FieldWarning>) -> FieldResult<Self> {
        let spec = root.get("spec")?;
        if let Some(spec) = &spec {
            spec.known_fields(&[
                "targets",
                "peers",
                "peerIsOptional",
                "origins",
                "originIsOptional",
                "principalBinding",
            ])?;
        }
        let (targets, mode) = match &spec {
            Some(spec) => (parse_targets(spec, &meta.namespace, warnings)?, parse_peers(spec)?),
            None => (Vec::new(), MtlsMode::Disable),
        };
        let misnamed = meta.name != DEFAULT_POLICY_NAME;
        match meta.kind {
            Kind::MeshPolicy if misnamed => warnings.push(FieldWarning {
                path: "metadata.name".into(),
                concern: Concern::MeshPolicyNotDefault,
            }),
            Kind::Policy if misnamed && targets.is_empty() => warnings.push(FieldWarning {
                path: "metadata.name".into(),
                concern: Concern::UnnamedNamespacePolicy,
            }),
            Kind::Policy if !misnamed && !targets.is_empty() => warnings.push(FieldWarning {
                path: "spec.targets".into(),
                concern: Concern::DefaultPolicyWithTargets,
            }),
            _ => {}
        }
        Ok(LegacyPolicy { meta, targets, mode })
    }

    /// A MeshPolicy Istio would use: only the one named `default` ever was.
    pub fn is_mesh_default(&self) -> bool {
        self.meta.kind == Kind::MeshPolicy && self.meta.name == DEFAULT_POLICY_NAME
    }

    /// A namespace-wide Policy: no targets.
    pub fn is_namespace_wide(&self) -> bool {
        self.meta.kind == Kind::Policy && self.targets.is_empty()
    }
}

fn parse_targets(spec: &Node, namespace: &str, warnings: &mut Vec<FieldWarning>) -> FieldResult<Vec<Target>> {
    let Some(targets) = spec.get("targets")? else {
        return Ok(Vec::new());
    };
    targets
        .items()?
        .iter()
        .map(|target| {
            target.known_fields(&["name", "labels", "ports"])?;
            let name = target.require("name")?.text()?;
            let ports = match target.get("ports")? {
                Some(ports) => ports
                    .items()?
                    .iter()
                    .map(parse_port_selector)
                    .collect::<FieldResult<_>>()?,
                None => Vec::new(),
            };
            let service = short_service_name(name, namespace);
            // Istio 1.1 validated a target name as a DNS-1123 label; peerguard reads FQDNs.
            if !is_dns1123_label(name) {
                warnings.push(FieldWarning {
                    path: child_path(&target.path, "name"),
                    concern: Concern::TargetNotDns1123Label {
                        name: name.to_string(),
                        service: service.clone(),
                    },
                });
            }
            Ok(Target { service, ports })
        })
        .collect()
}

/// `httpbin`, `httpbin.bar` and `httpbin.bar.svc.cluster.local` all name Service `httpbin` when
/// the policy is in `bar`. A name in another namespace can never select this workload, so it
/// keeps its full text and matches no Service.
fn short_service_name(name: &str, namespace: &str) -> String {
    match name.split_once('.') {
        Some((service, rest)) if rest.split('.').next() == Some(namespace) => service.to_string(),
        _ => name.to_string(),
    }
}

/// Lowercase letters, digits and `-`, starting and ending with a letter or digit, 63 at most.
fn is_dns1123_label(name: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|&b| alphanumeric(b) || b == b'-')
        && alphanumeric(bytes[0])
        && alphanumeric(bytes[bytes.len() - 1])
}

fn parse_port_selector(node: &Node) -> FieldResult<PortSelector> {
    node.known_fields(&["number", "name"])?;
    if let Some(number) = node.get("number")? {
        return Ok(PortSelector::Number(number.port()?));
    }
    Ok(PortSelector::Name(node.require("name")?.text()?.to_string()))
}

/// The first `mtls` peer method decides; `- mtls:` (null), `{}` and `mode: STRICT` are STRICT.
/// Without one (no peers, an empty list, only `jwt`) the workload accepted plaintext only.
fn parse_peers(spec: &Node) -> FieldResult<MtlsMode> {
    let Some(peers) = spec.get("peers")? else {
        return Ok(MtlsMode::Disable);
    };
    for peer in peers.items()? {
        // `jwt` is not read (it never made a port accept mTLS), so its inside is not checked.
        peer.known_fields(&["mtls", "jwt"])?;
        if !peer.has("mtls")? {
            continue;
        }
        let mtls = peer.get("mtls")?;
        if let Some(mtls) = &mtls {
            mtls.known_fields(&["mode", "allowTls"])?;
        }
        return match mtls.map(|mtls| mtls.get("mode")).transpose()?.flatten() {
            Some(mode) => mode.one_of(
                &[("STRICT", MtlsMode::Strict), ("PERMISSIVE", MtlsMode::Permissive)],
                "STRICT, PERMISSIVE",
            ),
            None => Ok(MtlsMode::Strict),
        };
    }
    Ok(MtlsMode::Disable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::error::Problem;

    fn parse(kind: Kind, yaml: &str) -> (FieldResult<LegacyPolicy>, Vec<FieldWarning>) {
        crate::policy::test_support::parse_one(kind, yaml, LegacyPolicy::parse)
    }

    fn mode(peers: &str) -> MtlsMode {
        let yaml = format!("metadata: {{name: default}}\nspec:\n  peers:\n{peers}");
        parse(Kind::MeshPolicy, &yaml).0.expect("policy is valid").mode
    }

    #[test]
    fn an_mtls_peer_in_any_spelling_is_strict() {
        for peers in [
            "  - mtls: {}",
            "  - mtls: null",
            "  - mtls:",
            "  - mtls: {mode: STRICT}",
        ] {
            assert_eq!(mode(peers), MtlsMode::Strict, "{peers}");
        }
        assert_eq!(mode("  - mtls: {mode: PERMISSIVE}"), MtlsMode::Permissive);
    }

    #[test]
    fn no_mtls_peer_means_plaintext_only() {
        for peers in ["    []", "", "  - jwt: {issuer: x}"] {
            assert_eq!(mode(peers), MtlsMode::Disable, "{peers:?}");
        }
        let (policy, _) = parse(Kind::Policy, "metadata: {name: default, namespace: foo}");
        assert_eq!(policy.unwrap().mode, MtlsMode::Disable);
    }

    #[test]
    fn a_legacy_mode_must_be_strict_or_permissive() {
        let (policy, _) = parse(
            Kind::MeshPolicy,
            "metadata: {name: default, namespace: default}\nspec: {peers: [{mtls: {mode: DISABLE}}]}",
        );
        let error = policy.unwrap_err();
        assert_eq!(error.path, "spec.peers[0].mtls.mode");
        assert_eq!(
            error.problem,
            Problem::NotOneOf {
                value: "\"DISABLE\"".into(),
                allowed: "STRICT, PERMISSIVE"
            }
        );
    }

    #[test]
    fn targets_name_services_by_short_or_qualified_name_and_ports_by_number_or_name() {
        let (policy, _) = parse(
            Kind::Policy,
            "metadata: {name: p, namespace: bar}\nspec:\n  targets:\n  - name: httpbin.bar.svc.cluster.local\n    ports: [{number: 1234}, {name: http}]\n  - name: other.foo",
        );
        let policy = policy.unwrap();
        assert_eq!(
            policy.targets,
            [
                Target {
                    service: "httpbin".into(),
                    ports: vec![PortSelector::Number(1234), PortSelector::Name("http".into())]
                },
                Target {
                    service: "other.foo".into(),
                    ports: vec![]
                }
            ]
        );
    }

    #[test]
    fn policies_istio_would_have_refused_are_warned_about() {
        let (_, warnings) = parse(Kind::Policy, "metadata: {name: strict-foo, namespace: foo}");
        assert_eq!(warnings[0].concern, Concern::UnnamedNamespacePolicy);
        let (_, warnings) = parse(Kind::MeshPolicy, "metadata: {name: mesh, namespace: default}");
        assert_eq!(warnings[0].concern, Concern::MeshPolicyNotDefault);
        let (_, warnings) = parse(
            Kind::Policy,
            "metadata: {name: httpbin, namespace: default}\nspec: {targets: [{name: httpbin}]}",
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_default_policy_with_targets_and_a_target_that_is_not_a_dns_label_are_warned_about() {
        let (_, warnings) = parse(
            Kind::Policy,
            "metadata: {name: default, namespace: bar}
spec: {targets: [{name: httpbin.bar.svc.cluster.local}]}",
        );
        assert_eq!(
            warnings,
            [
                FieldWarning {
                    path: "spec.targets[0].name".into(),
                    concern: Concern::TargetNotDns1123Label {
                        name: "httpbin.bar.svc.cluster.local".into(),
                        service: "httpbin".into()
                    }
                },
                FieldWarning {
                    path: "spec.targets".into(),
                    concern: Concern::DefaultPolicyWithTargets
                },
            ]
        );
        assert_eq!(
            warnings[0].concern.to_string(),
            "\"httpbin.bar.svc.cluster.local\" is not a DNS-1123 label (Istio 1.1 refused FQDNs here); read as \
             Service \"httpbin\""
        );
        for label in ["httpbin", "a", "web-2"] {
            assert!(is_dns1123_label(label), "{label}");
        }
        for not_label in ["", "-a", "a-", "Web", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(not_label), "{not_label}");
        }
    }
}
