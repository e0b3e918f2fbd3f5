//! Text of one policy file (+ its name) -> validated documents. Pure: no file system.
//!
//! Each `---` document is parsed into a generic value first and then walked, so that errors
//! name the file, the 0-based document index, `kind namespace/name` and the field path.

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::policy::authorization::model::AuthorizationPolicy;
use crate::policy::destination_rule::DestinationRule;
use crate::policy::document::{FieldWarning, Kind, Meta};
use crate::policy::error::{DocumentRef, PolicyError, PolicyWarning};
use crate::policy::legacy_policy::LegacyPolicy;
use crate::policy::node::{FieldError, FieldResult, Node};
use crate::policy::peer_authentication::PeerAuthentication;
use crate::policy::service::Service;

/// One understood document.
#[derive(Debug, Clone)]
pub(crate) enum Document {
    PeerAuthentication(PeerAuthentication),
    Authorization(AuthorizationPolicy),
    Legacy(LegacyPolicy),
    Service(Service),
    DestinationRule(DestinationRule),
}

impl Document {
    pub fn meta(&self) -> &Meta {
        match self {
            Document::PeerAuthentication(policy) => &policy.meta,
            Document::Authorization(policy) => &policy.meta,
            Document::Legacy(policy) => &policy.meta,
            Document::Service(service) => &service.meta,
            Document::DestinationRule(rule) => &rule.meta,
        }
    }
}

/// What one or more files held.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub documents: Vec<Document>,
    pub warnings: Vec<PolicyWarning>,
    /// Documents of kinds peerguard does not read (Deployments, VirtualServices, ...).
    pub skipped: usize,
}

impl Parsed {
    pub fn extend(&mut self, other: Parsed) {
        self.documents.extend(other.documents);
        self.warnings.extend(other.warnings);
        self.skipped += other.skipped;
    }
}

/// Parses a file's text. `source` names it in messages; a `.json` name selects JSON.
pub(crate) fn parse_text(text: &str, source: &str) -> Result<Parsed, PolicyError> {
    let mut parsed = Parsed::default();
    let syntax_error = |index: usize, message: String| PolicyError::Syntax {
        source_name: source.to_string(),
        index,
        message,
    };
    if source.ends_with(".json") {
        let value: Value = serde_json::from_str(text).map_err(|e| syntax_error(0, e.to_string()))?;
        read_document(&value, document_ref(source, 0, None), &mut parsed)?;
        return Ok(parsed);
    }
    if let Some(line) = too_deeply_nested(text) {
        return Err(syntax_error(
            0,
            format!("brackets nested deeper than {MAX_FLOW_DEPTH} at line {line}"),
        ));
    }
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| syntax_error(index, e.to_string()))?;
        read_document(&value, document_ref(source, index, None), &mut parsed)?;
    }
    Ok(parsed)
}

/// One object as the Kubernetes API serves it, validated exactly as a file's document is.
#[derive(Debug, Clone)]
pub struct ApiObject {
    document: Document,
    warnings: Vec<PolicyWarning>,
}

impl ApiObject {
    /// What reading it warned about (the object is used regardless).
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    pub(crate) fn document(&self) -> &Document {
        &self.document
    }
}

/// Reads one object from the Kubernetes API (JSON, with `apiVersion` and `kind`, which the
/// caller fills in where a list left them out). `source` says where it came from in messages,
/// e.g. `kubernetes, resourceVersion 41`. `Ok(None)`: a kind peerguard does not read.
pub fn read_api_object(value: &serde_json::Value, source: &str) -> Result<Option<ApiObject>, PolicyError> {
    // The same walk as a file's document: one set of rules, one set of messages.
    let value: Value = serde_yaml_ng::to_value(value).map_err(|e| PolicyError::Syntax {
        source_name: source.to_string(),
        index: 0,
        message: e.to_string(),
    })?;
    let at = DocumentRef {
        source: source.to_string(),
        index: None,
        item: None,
        identity: None,
    };
    let mut parsed = Parsed::default();
    read_object(&Node::root(&value), at, &mut parsed)?;
    Ok(parsed.documents.pop().map(|document| ApiObject {
        document,
        warnings: parsed.warnings,
    }))
}

/// Deepest `[`/`{` nesting a policy may have: serde_yaml_ng refuses deeper documents too, but
/// only after its scanner has gone through them, which takes time quadratic in the nesting (a
/// 30 KB file of `[` took 3 s in fuzzing). Counting first keeps a hostile or broken file linear.
const MAX_FLOW_DEPTH: usize = 128;

/// The line where YAML flow collections (`[`, `{`) first nest deeper than [`MAX_FLOW_DEPTH`],
/// counting outside quotes and comments; `None` when they never do. Brackets inside a block
/// scalar count too, which can only err towards refusing a file no policy would write.
fn too_deeply_nested(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (number, line) in text.lines().enumerate() {
        let mut quote = None;
        let mut previous = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some(open), c) if c == open => quote = None,
                (Some(_), _) => {}
                (None, '#') if previous.is_whitespace() => break,
                (None, '\'' | '"') => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(number + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
    }
    None
}

fn document_ref(source: &str, index: usize, item: Option<usize>) -> DocumentRef {
    DocumentRef {
        source: source.to_string(),
        index: Some(index),
        item,
        identity: None,
    }
}

/// One `---` document: empty, a `kind: List`, or a single object.
fn read_document(value: &Value, at: DocumentRef, parsed: &mut Parsed) -> Result<(), PolicyError> {
    if value.is_null() {
        return Ok(());
    }
    let root = Node::root(value);
    let invalid = |at: &DocumentRef, error: FieldError| PolicyError::Invalid {
        at: Box::new(at.clone()),
        path: error.path,
        problem: error.problem,
    };
    let (api_version, kind) = type_of(&root).map_err(|e| invalid(&at, e))?;
    if (api_version, kind) != ("v1", "List") {
        return read_object(&root, at, parsed);
    }
    let items = root
        .known_fields(&["apiVersion", "kind", "metadata", "items"])
        .and_then(|()| root.require("items"))
        .and_then(|items| items.items());
    for (item, node) in items.map_err(|e| invalid(&at, e))?.into_iter().enumerate() {
        read_object(
            &Node::root(node.value),
            DocumentRef {
                item: Some(item),
                ..at.clone()
            },
            parsed,
        )?;
    }
    Ok(())
}

/// `apiVersion` and `kind`, empty when absent.
fn type_of<'a>(root: &Node<'a>) -> FieldResult<(&'a str, &'a str)> {
    let text = |key: &str| -> FieldResult<&'a str> {
        root.get(key)?
            .map(|node| node.text())
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok((text("apiVersion")?, text("kind")?))
}

fn read_object(root: &Node, mut at: DocumentRef, parsed: &mut Parsed) -> Result<(), PolicyError> {
    let mut warnings = Vec::new();
    let result = type_of(root).and_then(|(api_version, kind)| match Kind::of(api_version, kind) {
        Some(kind) => read_kind(kind, root, &mut at, &mut warnings).map(Some),
        None => {
            tracing::debug!(%at, api_version, kind, "skipping a kind peerguard does not read");
            Ok(None)
        }
    });
    let document = result.map_err(|error| PolicyError::Invalid {
        at: Box::new(at.clone()),
        path: error.path,
        problem: error.problem,
    })?;
    match document {
        Some(document) => parsed.documents.push(document),
        None => parsed.skipped += 1,
    }
    parsed.warnings.extend(
        warnings
            .into_iter()
            .map(|FieldWarning { path, concern }| PolicyWarning {
                at: at.clone(),
                path,
                concern,
            }),
    );
    Ok(())
}

fn read_kind(kind: Kind, root: &Node, at: &mut DocumentRef, warnings: &mut Vec<FieldWarning>) -> FieldResult<Document> {
    let meta = Meta::parse(kind, root, at)?;
    Ok(match kind {
        Kind::PeerAuthentication => Document::PeerAuthentication(PeerAuthentication::parse(root, meta, warnings)?),
        Kind::AuthorizationPolicy => Document::Authorization(AuthorizationPolicy::parse(root, meta, warnings)?),
        Kind::MeshPolicy | Kind::Policy => Document::Legacy(LegacyPolicy::parse(root, meta, warnings)?),
        Kind::Service => Document::Service(Service::parse(root, meta, warnings)?),
        Kind::DestinationRule => Document::DestinationRule(DestinationRule::parse(root, meta)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_brackets_are_refused_in_linear_time() {
        // The fuzzer's hang: quadratic in the YAML scanner before its own depth limit.
        let hostile = format!("a: {}", "[".repeat(30_000));
        let started = std::time::Instant::now();
        let error = parse_text(&hostile, "p.yaml").unwrap_err().to_string();
        assert!(error.contains("nested deeper than 128 at line 1"), "{error}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Quoted and commented brackets are not nesting; ordinary flow style loads.
        let fine = format!(
            "a: \"{}\" # {}\nb: [[1], {{c: [2]}}]\n",
            "[".repeat(500),
            "{".repeat(500)
        );
        assert_eq!(too_deeply_nested(&fine), None);
    }

    fn error(text: &str, source: &str) -> String {
        parse_text(text, source).expect_err("the policy is invalid").to_string()
    }

    #[test]
    fn documents_lists_and_empty_documents_are_read_and_other_kinds_counted() {
        let text = "---\n\
            apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: default}\n---\n\
            ---\n\
            apiVersion: v1\nkind: List\nitems:\n\
            - {apiVersion: security.istio.io/v1beta1, kind: PeerAuthentication, metadata: {name: b, namespace: default}}\n\
            - {apiVersion: apps/v1, kind: Deployment, metadata: {name: c, namespace: default}}\n\
            - {apiVersion: serving.knative.dev/v1, kind: Service, metadata: {name: d, namespace: default}}\n";
        let parsed = parse_text(text, "p.yaml").unwrap();
        let names: Vec<_> = parsed.documents.iter().map(|d| d.meta().name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(parsed.skipped, 2);
    }

    #[test]
    fn a_namespaced_kind_without_a_namespace_is_refused_and_a_mesh_policy_needs_none() {
        assert_eq!(
            error(
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a}}",
                "p.yaml"
            ),
            "p.yaml: document 0 (PeerAuthentication): metadata.namespace: is required: a namespaced kind must \
             say where it applies"
        );
        let parsed = parse_text(
            "{apiVersion: authentication.istio.io/v1alpha1, kind: MeshPolicy, metadata: {name: default}}",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(parsed.documents[0].meta().namespace, "");
    }

    #[test]
    fn every_kind_refuses_an_unknown_field_and_suggests_the_nearest_known_one() {
        let at = |identity: &str| format!("p.yaml: document 0 ({identity}): ");
        let cases = [
            (
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: foo}, \
                 spec: {mtls: {mdoe: STRICT}}}",
                "PeerAuthentication foo/p",
                "spec.mtls.mdoe: unknown field; did you mean `mode`?",
            ),
            (
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: foo}, \
                 spec: {selectr: {matchLabels: {app: a}}}}",
                "PeerAuthentication foo/p",
                "spec.selectr: unknown field; did you mean `selector`?",
            ),
            (
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: foo}, \
                 spec: {selector: {matchLabels: {app: a}}, portLevelMTLS: {80: {mode: DISABLE}}}}",
                "PeerAuthentication foo/p",
                "spec.portLevelMTLS: unknown field; did you mean `portLevelMtls`?",
            ),
            (
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: foo}, \
                 spec: {selector: {matchLabel: {app: a}}}}",
                "PeerAuthentication foo/p",
                "spec.selector.matchLabel: unknown field; did you mean `matchLabels`?",
            ),
            (
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: foo}, \
                 sepc: {}}",
                "PeerAuthentication",
                "sepc: unknown field; did you mean `spec`?",
            ),
            (
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespce: foo}}",
                "PeerAuthentication",
                "metadata.namespce: unknown field; did you mean `namespace`?",
            ),
            (
                "{apiVersion: v1, kind: Service, metadata: {name: s, namespace: foo}, spec: {ports: [{port: 80, \
                 tragetPort: 8080}]}}",
                "Service foo/s",
                "spec.ports[0].tragetPort: unknown field; did you mean `targetPort`?",
            ),
            (
                "{apiVersion: v1, kind: Service, metadata: {name: s, namespace: foo}, spec: {selectors: {app: a}}}",
                "Service foo/s",
                "spec.selectors: unknown field; did you mean `selector`?",
            ),
            (
                "{apiVersion: authentication.istio.io/v1alpha1, kind: Policy, metadata: {name: default, namespace: foo}, \
                 spec: {peers: [{mtls: {mdoe: PERMISSIVE}}]}}",
                "Policy foo/default",
                "spec.peers[0].mtls.mdoe: unknown field; did you mean `mode`?",
            ),
            (
                "{apiVersion: authentication.istio.io/v1alpha1, kind: MeshPolicy, metadata: {name: default}, \
                 spec: {peer: [{mtls: {}}]}}",
                "MeshPolicy default",
                "spec.peer: unknown field; did you mean `peers`?",
            ),
        ];
        for (text, identity, message) in cases {
            assert_eq!(error(text, "p.yaml"), format!("{}{message}", at(identity)), "{text}");
        }
    }

    #[test]
    fn object_meta_fields_and_status_are_accepted_as_kubectl_prints_them() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: foo\n  uid: 1-2\n  \
            resourceVersion: '7'\n  generation: 1\n  labels: {app: s}\n  managedFields: []\n  ownerReferences: []\n  \
            finalizers: []\nspec:\n  type: ClusterIP\n  clusterIP: 10.0.0.1\n  clusterIPs: [10.0.0.1]\n  \
            ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n  sessionAffinity: None\n  \
            internalTrafficPolicy: Cluster\n  selector: {app: s}\n  ports:\n  - {name: http, protocol: TCP, \
            port: 80, targetPort: 8080, nodePort: 30080, appProtocol: http}\nstatus:\n  loadBalancer: {}\n";
        assert_eq!(parse_text(text, "s.yaml").unwrap().documents.len(), 1);
    }

    #[test]
    fn json_files_are_read_as_json() {
        let parsed = parse_text(
            r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "authentication.istio.io/v1alpha1", "kind": "MeshPolicy", "metadata": {"name": "default"}}]}"#,
            "p.json",
        )
        .unwrap();
        assert_eq!(parsed.documents[0].meta().to_string(), "MeshPolicy default");
    }

    #[test]
    fn errors_name_file_document_identity_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: default}\n---\n{}\n---\n\
            apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: finance, namespace: foo}\n\
            spec:\n  selector: {matchLabels: {app: finance}}\n  portLevelMtls:\n    8080: {mode: strict}\n";
        assert_eq!(
            error(text, "policy.yaml"),
            "policy.yaml: document 2 (PeerAuthentication foo/finance): spec.portLevelMtls.8080.mode: \
             \"strict\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
        );
    }

    #[test]
    fn errors_inside_a_list_name_the_item() {
        let text = "apiVersion: v1\nkind: List\nitems:\n\
            - {apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a, namespace: foo}, spec: {portLevelMtls: {80: {}}}}\n";
        assert_eq!(
            error(text, "list.yaml"),
            "list.yaml: document 0 items[0] (PeerAuthentication foo/a): spec.portLevelMtls: needs \
             spec.selector.matchLabels: port-level mTLS applies to the ports of selected workloads only"
        );
    }

    #[test]
    fn a_missing_name_is_reported_with_the_kind() {
        assert_eq!(
            error("{apiVersion: v1, kind: Service, metadata: {namespace: foo}}", "s.yaml"),
            "s.yaml: document 0 (Service): metadata.name: is required"
        );
    }

    #[test]
    fn a_bad_creation_timestamp_is_refused() {
        let message = error(
            "{apiVersion: v1, kind: Service, metadata: {name: s, namespace: default, creationTimestamp: yesterday}}",
            "s.yaml",
        );
        assert!(
            message.starts_with("s.yaml: document 0 (Service default/s): metadata.creationTimestamp: \"yesterday\" is not an RFC 3339 time"),
            "{message}"
        );
    }

    #[test]
    fn yaml_that_does_not_parse_is_reported_with_line_and_column() {
        assert_eq!(
            error("kind: Service\n---\nmetadata: {name: [}\n", "bad.yaml"),
            "bad.yaml: document 1: does not parse: did not find expected node content at line 3 column 19, \
             while parsing a flow node"
        );
        let message = error("{\"kind\": }", "bad.json");
        assert!(
            message.starts_with("bad.json: document 0: does not parse: "),
            "{message}"
        );
        assert!(message.contains("line 1 column 10"), "{message}");
    }

    #[test]
    fn warnings_carry_the_document_location() {
        let parsed = parse_text(
            "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a, namespace: foo}, spec: {selector: {}}}",
            "w.yaml",
        )
        .unwrap();
        assert_eq!(
            parsed.warnings[0].to_string(),
            "w.yaml: document 0 (PeerAuthentication foo/a): spec.selector: the selector is empty, so the policy \
             applies to the whole namespace"
        );
    }

    #[test]
    fn every_validation_error_reads_as_the_operator_sees_it() {
        let pa = |spec: &str| {
            format!("{{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {{name: p, namespace: foo}}, spec: {spec}}}")
        };
        let at = "p.yaml: document 0 (PeerAuthentication foo/p): ";
        let cases = [
            (
                pa("{mtls: {mode: Strict}}"),
                "spec.mtls.mode: \"Strict\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
            ),
            (
                pa("{portLevelMtls: {80: {mode: DISABLE}}}"),
                "spec.portLevelMtls: needs spec.selector.matchLabels: port-level mTLS applies to the ports of \
                 selected workloads only",
            ),
            (
                pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {}}"),
                "spec.portLevelMtls: is empty: list at least one port, or remove it",
            ),
            (
                pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {70000: {}}}"),
                "spec.portLevelMtls.70000: \"70000\" is not a port number (1..65535)",
            ),
            (
                pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {http: {}}}"),
                "spec.portLevelMtls.http: \"http\" is not a port number (1..65535)",
            ),
            (
                pa("{selector: {matchLabels: {'': a}}}"),
                "spec.selector.matchLabels: has an empty label key",
            ),
            (
                pa("{selector: {matchLabels: {'app*': a}}}"),
                "spec.selector.matchLabels[\"app*\"]: \"app*\" contains `*`: wildcards are not supported in selectors",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(error(&text, "p.yaml"), format!("{at}{message}"));
        }
        assert_eq!(
            error(
                "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: foo, \
                 annotations: {http-alpns.aspenmesh.io: 'on'}}}",
                "p.yaml"
            ),
            format!("{at}metadata.annotations[\"http-alpns.aspenmesh.io\"]: \"on\" is not one of \"true\", \"false\"")
        );
        assert_eq!(
            error(
                "{apiVersion: v1, kind: Service, metadata: {name: s, namespace: foo, annotations: {auth.istio.io/80: TLS}}}",
                "p.yaml"
            ),
            "p.yaml: document 0 (Service foo/s): metadata.annotations[\"auth.istio.io/80\"]: \"TLS\" is not one of \
             NONE, MUTUAL_TLS, INHERIT"
        );
        assert_eq!(
            error(
                "{apiVersion: authentication.istio.io/v1alpha1, kind: MeshPolicy, metadata: {name: default, namespace: default}, \
                 spec: {peers: [{mtls: {mode: strict}}]}}",
                "p.yaml"
            ),
            "p.yaml: document 0 (MeshPolicy default): spec.peers[0].mtls.mode: \"strict\" is not one of STRICT, PERMISSIVE"
        );
    }
}
