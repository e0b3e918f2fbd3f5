//! What can be wrong with a policy file, and what is merely worth a warning.
//!
//! Every message names the file, the document's 0-based index within that file (and, for a
//! `kind: List`, the item), the document's `kind namespace/name`, and the field path, because
//! the operator reading it has a directory of YAML and nothing else.

use std::fmt;
use std::path::PathBuf;

use crate::policy::AppProtocol;

/// Where a document came from: `policy.yaml: document 2 items[1] (PeerAuthentication foo/finance)`,
/// or for an object read from the Kubernetes API, which has no file and no document index,
/// `PeerAuthentication foo/finance (kubernetes, resourceVersion 41)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// The file name (or the name given to `parse_str`), or where an API object came from.
    pub source: String,
    /// 0-based index of the `---`-separated document within the file; `None` for an API object.
    pub index: Option<usize>,
    /// 0-based index within a `kind: List` document's `items`, if the document is a List.
    pub item: Option<usize>,
    /// `Kind namespace/name`, as far as it is known when the problem is found.
    pub identity: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(index) = self.index else {
            return match &self.identity {
                Some(identity) => write!(f, "{identity} ({})", self.source),
                None => f.write_str(&self.source),
            };
        };
        write!(f, "{}: document {index}", self.source)?;
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        if let Some(identity) = &self.identity {
            write!(f, " ({identity})")?;
        }
        Ok(())
    }
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("expected {expected}, found {found}")]
    WrongType { expected: &'static str, found: String },
    #[error("is required")]
    Missing,
    #[error("{value} is not one of {allowed}")]
    NotOneOf { value: String, allowed: &'static str },
    #[error("needs spec.selector.matchLabels: port-level mTLS applies to the ports of selected workloads only")]
    PortLevelWithoutSelector,
    #[error("is empty: list at least one port, or remove it")]
    EmptyPortLevel,
    #[error("{value} is not a port number (1..65535)")]
    BadPort { value: String },
    #[error("has an empty label key")]
    EmptyLabelKey,
    #[error("{value} contains `*`: wildcards are not supported in selectors")]
    WildcardInSelector { value: String },
    /// `suggestion` is empty or `; did you mean `name`?`.
    #[error("unknown field{suggestion}")]
    UnknownField { field: String, suggestion: String },
    #[error("is required: a namespaced kind must say where it applies")]
    MissingNamespace,
    #[error("must not be empty")]
    EmptyList,
    #[error("must not be empty: name at least one field")]
    EmptyEntry,
    #[error("empty value not allowed")]
    EmptyValue,
    #[error("{value:?} is not an IP address or CIDR block: {reason}")]
    BadCidr { value: String, reason: &'static str },
    #[error("{value} is not a port number (0..65535)")]
    BadAuthorizationPort { value: String },
    #[error("{value:?} is not a service account: {reason}")]
    BadServiceAccount { value: String, reason: &'static str },
    #[error("{value:?}: a trust domain must not contain `/`")]
    BadTrustDomain { value: String },
    #[error("{value:?}: at most one `*`, at the start or the end")]
    BadWildcard { value: String },
    #[error("cannot set serviceAccounts with namespaces or principals")]
    ServiceAccountsWithIdentity,
    #[error("{key:?} is not a supported `when` key: {why}")]
    UnsupportedWhenKey { key: String, why: &'static str },
    #[error("at least one of `values` or `notValues` must be set")]
    NeedsValues,
    #[error("{field} is not supported with the CUSTOM action")]
    NotWithCustom { field: String },
    #[error("a provider is only allowed with the CUSTOM action, not {action}")]
    ProviderWithoutCustom { action: &'static str },
    #[error(
        "{action} without rules is meaningless as it is never triggered; add an empty rule `{{}}` to trigger it \
         for every connection"
    )]
    RulesRequired { action: &'static str },
    #[error("only one of selector and targetRef(s) can be set")]
    SelectorWithTargetRef,
    #[error("the dry-run annotation is only supported on ALLOW and DENY policies, not {action}")]
    DryRunOnAction { action: &'static str },
    #[error("{value:?} is not a host: {reason}")]
    BadHost { value: String, reason: &'static str },
    #[error("{value} is not an RFC 3339 time: {reason}")]
    BadTimestamp { value: String, reason: String },
}

/// A policy that cannot be used. `Display` is the whole operator-facing message.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{source_name}: document {index}: does not parse: {message}")]
    Syntax {
        source_name: String,
        index: usize,
        /// The parser's message, with its line and column.
        message: String,
    },
    #[error("{at}: {}{problem}", path_prefix(.path))]
    Invalid {
        at: Box<DocumentRef>,
        path: String,
        problem: Problem,
    },
    #[error("{at}: has the same kind, namespace and name as {first}")]
    Duplicate {
        at: Box<DocumentRef>,
        first: Box<DocumentRef>,
    },
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// Something suspicious that does not stop the policy from being used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    pub at: DocumentRef,
    pub path: String,
    pub concern: Concern,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}{}", self.at, path_prefix(&self.path), self.concern)
    }
}

/// Why a warning was raised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Concern {
    #[error("the selector is empty, so the policy applies to the whole namespace")]
    EmptySelector,
    #[error("the HTTP ALPN annotation is not supported in the root namespace {root_namespace}; ignored")]
    AnnotationInRootNamespace { root_namespace: String },
    #[error(
        "a namespace-wide Policy (no targets) should be named `default` (Istio's validation refused others); \
         used as the namespace policy"
    )]
    UnnamedNamespacePolicy,
    #[error("only the MeshPolicy named `default` is used; this one is ignored")]
    MeshPolicyNotDefault,
    #[error(
        "a Policy named `default` should have no targets (Istio's validation refused one with targets); used as a \
         Service policy"
    )]
    DefaultPolicyWithTargets,
    #[error("{name:?} is not a DNS-1123 label (Istio 1.1 refused FQDNs here); read as Service {service:?}")]
    TargetNotDns1123Label { name: String, service: String },
    #[error("targetRef(s) name a gateway or waypoint, which a sidecar is not; the policy is ignored")]
    TargetRefIgnored,
    #[error("peerguard has no extension providers, so this CUSTOM policy's rules act as DENY rules")]
    CustomActsAsDeny,
    #[error("HTTP-only: in an ALLOW policy the whole rule is dropped for TCP connections")]
    HttpOnlyRuleDropped,
    #[error("HTTP-only: ignored for TCP connections (an entry left empty matches anything)")]
    HttpOnlyFieldIgnored,
    #[error(
        "the named targetPort {name:?} cannot be mapped to a workload port without the pod spec; \
         policies on this Service port are ignored"
    )]
    NamedTargetPort { name: String },
    #[error("names service port {port}, which this Service does not expose; ignored")]
    AnnotationPortNotInService { port: u16 },
    #[error(
        "declares {declared} for workload port {workload_port}, but {by} declares {holds}, which holds \
         (the oldest Service wins; --app-protocol beats both)"
    )]
    ProtocolConflict {
        workload_port: u16,
        declared: AppProtocol,
        holds: AppProtocol,
        /// The declaration that holds, e.g. `Service foo/web port 80 (name http-web)`.
        by: String,
    },
}
