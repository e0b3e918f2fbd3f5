//! What every understood document has: its kind, `metadata`, and where it came from.

use std::collections::BTreeMap;
use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::policy::error::{Concern, DocumentRef, Problem};
use crate::policy::node::{child_path, FieldError, FieldResult, Node};

/// The kinds peerguard understands (docs/policy.md#where-policies-come-from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    PeerAuthentication,
    AuthorizationPolicy,
    MeshPolicy,
    Policy,
    Service,
    DestinationRule,
}

impl Kind {
    /// The kind an `apiVersion` + `kind` pair names, if peerguard understands it. Matching on
    /// both keeps e.g. a Knative `Service` or a Kyverno `Policy` out.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        match (api_version, kind) {
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                Some(Kind::PeerAuthentication)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                Some(Kind::AuthorizationPolicy)
            }
            ("authentication.istio.io/v1alpha1", "MeshPolicy") => Some(Kind::MeshPolicy),
            ("authentication.istio.io/v1alpha1", "Policy") => Some(Kind::Policy),
            ("v1", "Service") => Some(Kind::Service),
            (
                "networking.istio.io/v1alpha3" | "networking.istio.io/v1beta1" | "networking.istio.io/v1",
                "DestinationRule",
            ) => Some(Kind::DestinationRule),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshPolicy => "MeshPolicy",
            Kind::Policy => "Policy",
            Kind::Service => "Service",
            Kind::DestinationRule => "DestinationRule",
        }
    }
}

/// The top level of every understood kind; `status` is written by the cluster and ignored.
pub(crate) const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Every field of Kubernetes' ObjectMeta (`clusterName` as older servers print it), so that
/// `kubectl get -o yaml` output loads as is.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "clusterName",
];

/// Istio's WorkloadSelector.
pub(crate) const SELECTOR_FIELDS: &[&str] = &["matchLabels"];

/// A document's identity and the metadata resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub kind: Kind,
    /// Required; empty for the cluster-scoped MeshPolicy.
    pub namespace: String,
    pub name: String,
    /// `None` (absent) counts as oldest, as in Istio.
    pub created: Option<OffsetDateTime>,
    pub origin: DocumentRef,
}

impl Meta {
    /// Reads `metadata` and records the identity in `origin` so later errors name it.
    pub fn parse(kind: Kind, root: &Node, origin: &mut DocumentRef) -> FieldResult<Meta> {
        origin.identity = Some(kind.as_str().to_string());
        root.known_fields(OBJECT_FIELDS)?;
        let metadata = root.require("metadata")?;
        metadata.known_fields(OBJECT_META_FIELDS)?;
        let name = metadata.require("name")?.text()?.to_string();
        // A document without a namespace is not "default": reading it so would silently move
        // a hand-written policy (docs/policy.md#validation).
        let namespace = match (kind, metadata.get("namespace")?) {
            (Kind::MeshPolicy, _) => String::new(),
            (_, Some(namespace)) => namespace.text()?.to_string(),
            (_, None) => {
                return Err(FieldError {
                    path: child_path(&metadata.path, "namespace"),
                    problem: Problem::MissingNamespace,
                })
            }
        };
        let mut meta = Meta {
            kind,
            namespace,
            name,
            created: None,
            origin: origin.clone(),
        };
        origin.identity = Some(meta.to_string());
        meta.origin = origin.clone();
        meta.created = metadata
            .get("creationTimestamp")?
            .map(|node| parse_timestamp(&node))
            .transpose()?;
        Ok(meta)
    }

    /// Istio's order among policies at one level: oldest first, then the smaller name.
    pub fn precedence(&self) -> (Option<OffsetDateTime>, &str) {
        (self.created, &self.name)
    }

    /// What makes two documents the same object in Kubernetes.
    pub fn key(&self) -> (Kind, String, String) {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

fn parse_timestamp(node: &Node) -> FieldResult<OffsetDateTime> {
    let text = node.text()?;
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        node.error(Problem::BadTimestamp {
            value: format!("{text:?}"),
            reason: e.to_string(),
        })
    })
}

/// A warning found while reading one document, before the caller adds where the document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldWarning {
    pub path: String,
    pub concern: Concern,
}

/// Reads a label map (`selector.matchLabels` or a Service's `selector`): text keys and values,
/// no empty key, no `*` anywhere.
pub(crate) fn parse_labels(node: &Node) -> FieldResult<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for (key, value) in node.entries()? {
        if key.is_empty() {
            return Err(node.error(Problem::EmptyLabelKey));
        }
        let text = value.text()?;
        if key.contains('*') {
            return Err(value.error(Problem::WildcardInSelector {
                value: format!("{key:?}"),
            }));
        }
        if text.contains('*') {
            return Err(value.error(Problem::WildcardInSelector {
                value: format!("{text:?}"),
            }));
        }
        labels.insert(key, text.to_string());
    }
    Ok(labels)
}

/// Whether every label of `selector` is on the workload. An empty selector matches anything;
/// what "no selector" means differs by kind, so callers check emptiness first.
pub(crate) fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}
