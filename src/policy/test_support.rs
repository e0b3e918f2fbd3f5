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

/// `(mode, "Kind namespace/name level")`, or an empty text when no policy set the mode.
pub(crate) fn verdict(policy: &PortPolicy) -> (MtlsMode, String) {
    let source = policy
        .source
        .as_ref()
        .map(|s| format!("{s} {}", s.level.as_str()))
        .unwrap_or_default();
    (policy.mode, source)
}
