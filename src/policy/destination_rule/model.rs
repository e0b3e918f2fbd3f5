//! A validated DestinationRule: the parts that decide a client's TLS mode, with every field of
//! the parts peerguard reads checked, so a typo such as `tsl` or `portLevelSetting` fails closed
//! instead of silently leaving the client on plaintext.

use crate::policy::document::Meta;
use crate::policy::error::Problem;
use crate::policy::node::{FieldResult, Node};

/// The cluster's DNS domain, which Service hostnames end in.
pub(crate) const CLUSTER_DOMAIN: &str = "cluster.local";

/// DestinationRule `spec` fields, across v1alpha3, v1beta1 and v1.
const SPEC_FIELDS: &[&str] = &["host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"];

/// TrafficPolicy fields.
const TRAFFIC_POLICY_FIELDS: &[&str] = &[
    "loadBalancer",
    "connectionPool",
    "outlierDetection",
    "tls",
    "portLevelSettings",
    "tunnel",
    "proxyProtocol",
    "retryBudget",
];

/// TrafficPolicy.PortTrafficPolicy fields.
const PORT_POLICY_FIELDS: &[&str] = &["port", "loadBalancer", "connectionPool", "outlierDetection", "tls"];

/// ClientTLSSettings fields.
const TLS_FIELDS: &[&str] = &[
    "mode",
    "clientCertificate",
    "privateKey",
    "caCertificates",
    "credentialName",
    "subjectAltNames",
    "sni",
    "insecureSkipVerify",
    "caCrl",
];

/// Subset fields.
const SUBSET_FIELDS: &[&str] = &["name", "labels", "trafficPolicy"];

/// The TLS a client of the host originates (ClientTLSSettings.mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl ClientTls {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTls::Disable => "DISABLE",
            ClientTls::Simple => "SIMPLE",
            ClientTls::Mutual => "MUTUAL",
            ClientTls::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

/// The namespaces a DestinationRule is visible to, besides its own (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Export {
    /// Absent, empty, or `*`.
    Public,
    /// `.` alone: its own namespace only.
    Private,
    /// Named namespaces (a `.` among them adds nothing beyond its own first pool).
    To(Vec<String>),
}

/// One `portLevelSettings` entry: its port and its `tls`, which replaces the top-level one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortTls {
    pub port: u16,
    /// `None`: the entry has no `tls`, so on this port no TLS is set at all.
    pub tls: Option<ClientTls>,
}

/// The client-side TLS of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrafficPolicy {
    pub tls: Option<ClientTls>,
    /// In written order: the first entry for a port is the one used.
    pub ports: Vec<PortTls>,
}

impl TrafficPolicy {
    /// The TLS for `port`: the first port entry for it replaces the top-level `tls` whole, as
    /// Istio's `SelectTrafficPolicyComponents` does.
    pub fn tls_for(&self, port: u16) -> (Option<ClientTls>, Option<usize>) {
        match self.ports.iter().position(|entry| entry.port == port) {
            Some(index) => (self.ports[index].tls, Some(index)),
            None => (self.tls, None),
        }
    }
}

/// One validated DestinationRule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DestinationRule {
    pub meta: Meta,
    /// `spec.host` as written; `resolve` reads short names in the rule's namespace.
    pub host: String,
    pub export: Export,
    pub traffic_policy: Option<TrafficPolicy>,
    /// A rule with a `workloadSelector` applies to the clients it selects, which `tls-check`
    /// (given a namespace, not a workload) cannot name; such rules are left out.
    pub selects_workloads: bool,
}

impl DestinationRule {
    /// Whether the rule's namespace exports it to clients in `namespace`. `.` exports to no
    /// one: the rule's own namespace sees it anyway, as its first pool, and Istio keeps private
    /// rules out of the exported ones even for a client in the root namespace.
    pub fn exported_to(&self, namespace: &str) -> bool {
        match &self.export {
            Export::Public => true,
            Export::Private => false,
            Export::To(names) => names.iter().any(|name| name == namespace),
        }
    }

    /// The host as a fully qualified name: a name without a dot is a Service of the rule's
    /// namespace (Istio's `ResolveShortnameToFQDN`); `*` and `*.suffix` stay as written.
    pub fn fqdn(&self) -> String {
        if self.host.contains('.') || self.host == "*" {
            self.host.clone()
        } else {
            format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.host, self.meta.namespace)
        }
    }

    pub fn parse(root: &Node, meta: Meta) -> FieldResult<Self> {
        let spec = root.require("spec")?;
        spec.known_fields(SPEC_FIELDS)?;
        let host_node = spec.require("host")?;
        let host = parse_host(&host_node)?;
        let export = match spec.get("exportTo")? {
            Some(node) => parse_export(&node)?,
            None => Export::Public,
        };
        let traffic_policy = spec
            .get("trafficPolicy")?
            .map(|node| parse_traffic_policy(&node))
            .transpose()?;
        for subset in spec
            .get("subsets")?
            .map(|node| node.items())
            .transpose()?
            .unwrap_or_default()
        {
            subset.known_fields(SUBSET_FIELDS)?;
            subset.require("name")?.text()?;
            if let Some(policy) = subset.get("trafficPolicy")? {
                parse_traffic_policy(&policy)?;
            }
        }
        Ok(DestinationRule {
            meta,
            host,
            export,
            traffic_policy,
            selects_workloads: spec.get("workloadSelector")?.is_some(),
        })
    }
}

/// A host is a name, or `*` followed by a suffix: Istio refuses a `*` anywhere else.
fn parse_host(node: &Node) -> FieldResult<String> {
    let host = node.text()?;
    let bad = |reason: &'static str| {
        node.error(Problem::BadHost {
            value: host.to_string(),
            reason,
        })
    };
    if host.is_empty() {
        return Err(bad("a host must not be empty"));
    }
    let wildcard_ok = match host.strip_prefix('*') {
        Some(rest) => !rest.contains('*') && (rest.is_empty() || rest.starts_with('.')),
        None => !host.contains('*'),
    };
    if !wildcard_ok {
        return Err(bad("a wildcard host is `*` or `*.` followed by a domain"));
    }
    Ok(host.to_string())
}

fn parse_export(node: &Node) -> FieldResult<Export> {
    let mut names = Vec::new();
    for item in node.items()? {
        let name = item.text()?;
        if name.is_empty() {
            return Err(item.error(Problem::EmptyValue));
        }
        names.push(name.to_string());
    }
    Ok(match names.as_slice() {
        [] => Export::Public,
        names if names.iter().any(|name| name == "*") => Export::Public,
        [only] if only == "." => Export::Private,
        _ => Export::To(names),
    })
}

fn parse_traffic_policy(node: &Node) -> FieldResult<TrafficPolicy> {
    node.known_fields(TRAFFIC_POLICY_FIELDS)?;
    let tls = node.get("tls")?.map(|tls| parse_tls(&tls)).transpose()?;
    let mut ports = Vec::new();
    for entry in node
        .get("portLevelSettings")?
        .map(|n| n.items())
        .transpose()?
        .unwrap_or_default()
    {
        entry.known_fields(PORT_POLICY_FIELDS)?;
        let port = entry.require("port")?;
        port.known_fields(&["number"])?;
        ports.push(PortTls {
            port: port.require("number")?.port()?,
            tls: entry.get("tls")?.map(|tls| parse_tls(&tls)).transpose()?,
        });
    }
    Ok(TrafficPolicy { tls, ports })
}

/// `tls: {}` is DISABLE: `mode` defaults to it.
fn parse_tls(node: &Node) -> FieldResult<ClientTls> {
    node.known_fields(TLS_FIELDS)?;
    match node.get("mode")? {
        None => Ok(ClientTls::Disable),
        Some(mode) => mode.one_of(
            &[
                ("DISABLE", ClientTls::Disable),
                ("SIMPLE", ClientTls::Simple),
                ("MUTUAL", ClientTls::Mutual),
                ("ISTIO_MUTUAL", ClientTls::IstioMutual),
            ],
            "DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
        ),
    }
}
