//! Builders for the policy tables: YAML documents in a line, a workload, a verdict in words.

use std::collections::BTreeMap;

use crate::policy::{MtlsMode, PolicySet, PortPolicy, Workload};

pub(crate) const ROOT: &str = "istio-system";

/// A PeerAuthentication document; `spec` is flow YAML, e.g. `{mtls: {mode: STRICT}}`.
pub(crate) fn peer(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// A PeerAuthentication with a creation time.
pub(crate) fn peer_created(namespace: &str, name: &str, created: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}, creationTimestamp: '{created}'}}\nspec: {spec}\n"
    )
}

/// A PeerAuthentication with annotations, e.g. `{http-alpns.aspenmesh.io: 'true'}`.
pub(crate) fn peer_annotated(namespace: &str, name: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}, annotations: {annotations}}}\nspec: {spec}\n"
    )
}

/// A v1alpha1 document of `kind` (MeshPolicy or Policy).
pub(crate) fn legacy(kind: &str, namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: authentication.istio.io/v1alpha1\nkind: {kind}\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// A Service; `annotations` is flow YAML (`{}` for none).
pub(crate) fn service(namespace: &str, name: &str, annotations: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{name: {name}, namespace: {namespace}, annotations: {annotations}}}\nspec: {spec}\n"
    )
}

pub(crate) fn policies(documents: &[String]) -> PolicySet {
    PolicySet::parse_str(&documents.join("---\n"), "test.yaml")
        .expect("test policies are valid")
        .set
}

pub(crate) fn workload(namespace: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: namespace.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        root_namespace: ROOT.to_string(),
    }
}

/// One row of a resolution table: documents, the port asked about, and the expected verdict.
pub(crate) struct Case {
    pub name: &'static str,
    pub documents: Vec<String>,
    pub port: u16,
    pub expect: (MtlsMode, &'static str),
}

/// Resolves every row for `workload` and checks its verdict.
pub(crate) fn run_cases(workload: &Workload, cases: Vec<Case>) {
    for case in cases {
        let set = policies(&case.documents);
        let (mode, source) = verdict(&set.resolve(workload, case.port));
        assert_eq!((mode, source.as_str()), case.expect, "{}", case.name);
    }
}

/// `(mode, "Kind namespace/name level")`, or an empty text when no policy set the mode.
pub(crate) fn verdict(policy: &PortPolicy) -> (MtlsMode, String) {
    let source = policy
        .source
        .as_ref()
        .map(|s| format!("{s} {}", s.level.as_str()))
        .unwrap_or_default();
    (policy.mode, source)
}

/// Parses one document of `kind` with a kind's own `parse`, as the loader would, returning
/// its result and the warnings it raised.
pub(crate) fn parse_one<T>(
    kind: crate::policy::document::Kind,
    yaml: &str,
    parse: impl FnOnce(
        &crate::policy::node::Node,
        crate::policy::document::Meta,
        &mut Vec<crate::policy::document::FieldWarning>,
    ) -> crate::policy::node::FieldResult<T>,
) -> (
    crate::policy::node::FieldResult<T>,
    Vec<crate::policy::document::FieldWarning>,
) {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).expect("test YAML parses");
    let root = crate::policy::node::Node::root(&value);
    let mut origin = crate::policy::error::DocumentRef {
        source: "test.yaml".into(),
        index: Some(0),
        item: None,
        identity: None,
    };
    let meta = crate::policy::document::Meta::parse(kind, &root, &mut origin).expect("metadata is valid");
    let mut warnings = Vec::new();
    (parse(&root, meta, &mut warnings), warnings)
}
