//! `PeerAuthentication` (`security.istio.io/v1` and `/v1beta1`): reading and validating one.

use std::collections::BTreeMap;

use crate::policy::document::{parse_labels, FieldWarning, Meta, SELECTOR_FIELDS};
use crate::policy::error::{Concern, Problem};
use crate::policy::node::{FieldResult, Node};
use crate::policy::MtlsMode;

/// The Aspen Mesh annotation that makes standard HTTP ALPNs mesh markers
/// (docs/policy.md#the-http-alpn-annotation).
pub(crate) const HTTP_ALPN_ANNOTATION: &str = "http-alpns.aspenmesh.io";

const MODES: [(&str, Option<MtlsMode>); 4] = [
    ("UNSET", None),
    ("DISABLE", Some(MtlsMode::Disable)),
    ("PERMISSIVE", Some(MtlsMode::Permissive)),
    ("STRICT", Some(MtlsMode::Strict)),
];
const MODE_NAMES: &str = "UNSET, DISABLE, PERMISSIVE, STRICT";

/// One validated PeerAuthentication. A mode of `None` is UNSET: inherit from the level above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerAuthentication {
    pub meta: Meta,
    /// `spec.selector.matchLabels`; empty means namespace- or mesh-wide.
    pub selector: BTreeMap<String, String>,
    pub mode: Option<MtlsMode>,
    /// `spec.portLevelMtls`, keyed by workload (container) port.
    pub port_level: BTreeMap<u16, Option<MtlsMode>>,
    /// The HTTP ALPN annotation, if present.
    pub http_alpn: Option<bool>,
}

impl PeerAuthentication {
    pub fn parse(root: &Node, meta: Meta, warnings: &mut Vec<FieldWarning>) -> FieldResult<Self> {
        let http_alpn = match root.require("metadata")?.get("annotations")? {
            Some(annotations) => annotations
                .get(HTTP_ALPN_ANNOTATION)?
                .map(|value| value.one_of(&[("true", true), ("false", false)], "\"true\", \"false\""))
                .transpose()?,
            None => None,
        };
        let spec = root.get("spec")?;
        if let Some(spec) = &spec {
            spec.known_fields(&["selector", "mtls", "portLevelMtls"])?;
        }
        let spec = match &spec {
            Some(spec) => spec,
            None => {
                return Ok(PeerAuthentication {
                    meta,
                    selector: BTreeMap::new(),
                    mode: None,
                    port_level: BTreeMap::new(),
                    http_alpn,
                })
            }
        };
        let selector = match spec.get("selector")? {
            Some(selector) => {
                selector.known_fields(SELECTOR_FIELDS)?;
                let labels = match selector.get("matchLabels")? {
                    Some(match_labels) => parse_labels(&match_labels)?,
                    None => BTreeMap::new(),
                };
                if labels.is_empty() {
                    warnings.push(FieldWarning {
                        path: selector.path.clone(),
                        concern: Concern::EmptySelector,
                    });
                }
                labels
            }
            None => BTreeMap::new(),
        };
        let mode = match spec.get("mtls")? {
            Some(mtls) => parse_mode(&mtls)?,
            None => None,
        };
        let port_level = match spec.get("portLevelMtls")? {
            Some(node) => parse_port_level(&node, !selector.is_empty())?,
            None => BTreeMap::new(),
        };
        Ok(PeerAuthentication {
            meta,
            selector,
            mode,
            port_level,
            http_alpn,
        })
    }
}

/// `{mode: X}`; a missing mode (or an empty `{}`) is UNSET.
fn parse_mode(mtls: &Node) -> FieldResult<Option<MtlsMode>> {
    mtls.known_fields(&["mode"])?;
    match mtls.get("mode")? {
        Some(mode) => mode.one_of(&MODES, MODE_NAMES),
        None => Ok(None),
    }
}

fn parse_port_level(node: &Node, has_selector: bool) -> FieldResult<BTreeMap<u16, Option<MtlsMode>>> {
    // Istio refuses port-level settings without a selector: ports belong to a workload.
    if !has_selector {
        return Err(node.error(Problem::PortLevelWithoutSelector));
    }
    let entries = node.entries()?;
    if entries.is_empty() {
        return Err(node.error(Problem::EmptyPortLevel));
    }
    entries
        .into_iter()
        .map(|(key, mtls)| {
            let port = crate::policy::node::parse_port(&key).ok_or_else(|| {
                mtls.error(Problem::BadPort {
                    value: format!("{key:?}"),
                })
            })?;
            Ok((port, parse_mode(&mtls)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::document::Kind;

    fn parse(yaml: &str) -> (FieldResult<PeerAuthentication>, Vec<FieldWarning>) {
        crate::policy::test_support::parse_one(Kind::PeerAuthentication, yaml, PeerAuthentication::parse)
    }

    fn problem(yaml: &str) -> (String, Problem) {
        let error = parse(yaml).0.expect_err("policy is invalid");
        (error.path, error.problem)
    }

    #[test]
    fn a_missing_mtls_block_and_an_empty_one_are_unset() {
        let (policy, _) = parse("metadata: {name: a, namespace: default}\nspec: {}");
        assert_eq!(policy.unwrap().mode, None);
        let (policy, _) = parse("metadata: {name: a, namespace: default}\nspec: {mtls: {}}");
        assert_eq!(policy.unwrap().mode, None);
    }

    #[test]
    fn port_level_entries_are_keyed_by_number_and_may_be_unset() {
        let (policy, _) = parse(
            "metadata: {name: a, namespace: default}\nspec: {selector: {matchLabels: {app: x}}, portLevelMtls: {8080: {mode: DISABLE}, '9090': {}}}",
        );
        let policy = policy.unwrap();
        assert_eq!(
            policy.port_level,
            BTreeMap::from([(8080, Some(MtlsMode::Disable)), (9090, None)])
        );
    }

    #[test]
    fn modes_are_exact_and_case_sensitive() {
        assert_eq!(
            problem("metadata: {name: a, namespace: default}\nspec: {mtls: {mode: strict}}"),
            (
                "spec.mtls.mode".into(),
                Problem::NotOneOf {
                    value: "\"strict\"".into(),
                    allowed: MODE_NAMES
                }
            )
        );
    }

    #[test]
    fn port_level_needs_selector_labels() {
        assert_eq!(
            problem(
                "metadata: {name: a, namespace: default}\nspec: {selector: {}, portLevelMtls: {8080: {mode: DISABLE}}}"
            ),
            ("spec.portLevelMtls".into(), Problem::PortLevelWithoutSelector)
        );
    }

    #[test]
    fn an_empty_port_level_map_is_refused() {
        assert_eq!(
            problem(
                "metadata: {name: a, namespace: default}\nspec: {selector: {matchLabels: {app: x}}, portLevelMtls: {}}"
            ),
            ("spec.portLevelMtls".into(), Problem::EmptyPortLevel)
        );
    }

    #[test]
    fn port_keys_must_be_ports() {
        for key in ["0", "65536", "http", "-1"] {
            let yaml = format!(
                "metadata: {{name: a, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: x}}}}, portLevelMtls: {{'{key}': {{}}}}}}"
            );
            let (_, problem) = problem(&yaml);
            assert_eq!(
                problem,
                Problem::BadPort {
                    value: format!("{key:?}")
                }
            );
        }
    }

    #[test]
    fn selectors_refuse_empty_keys_and_wildcards() {
        assert_eq!(
            problem("metadata: {name: a, namespace: default}\nspec: {selector: {matchLabels: {'': x}}}"),
            ("spec.selector.matchLabels".into(), Problem::EmptyLabelKey)
        );
        assert_eq!(
            problem("metadata: {name: a, namespace: default}\nspec: {selector: {matchLabels: {app: '*'}}}"),
            (
                "spec.selector.matchLabels.app".into(),
                Problem::WildcardInSelector { value: "\"*\"".into() }
            )
        );
    }

    #[test]
    fn the_annotation_must_be_the_text_true_or_false() {
        let (policy, _) =
            parse("metadata: {name: a, namespace: default, annotations: {http-alpns.aspenmesh.io: 'false'}}");
        assert_eq!(policy.unwrap().http_alpn, Some(false));
        assert_eq!(
            problem("metadata: {name: a, namespace: default, annotations: {http-alpns.aspenmesh.io: 'yes'}}"),
            (
                "metadata.annotations[\"http-alpns.aspenmesh.io\"]".into(),
                Problem::NotOneOf {
                    value: "\"yes\"".into(),
                    allowed: "\"true\", \"false\""
                }
            )
        );
    }

    #[test]
    fn an_empty_selector_is_a_warning() {
        let (policy, warnings) = parse("metadata: {name: a, namespace: default}\nspec: {selector: {matchLabels: {}}}");
        assert!(policy.unwrap().selector.is_empty());
        assert_eq!(
            warnings,
            [FieldWarning {
                path: "spec.selector".into(),
                concern: Concern::EmptySelector
            }]
        );
    }
}
