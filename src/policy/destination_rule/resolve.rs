//! Which DestinationRule sets a client's TLS to a Service port: Istio 1.1-1.4's three pools
//! (`PushContext.DestinationRule`, `MostSpecificHostMatch`, `combineSingleDestinationRule`).
//! Pure: the rules and the question in, the deciding rule and the TLS out.

use super::model::{ClientTls, DestinationRule};

/// Where the deciding rule was found, in the order the pools are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Every rule in the client's namespace, exported or not (skipped for the root namespace).
    ClientNamespace,
    /// The rules the Service's namespace exports to the client.
    ServiceNamespace,
    /// The rules the root namespace exports to the client.
    RootNamespace,
}

/// What the client-side lookup is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup<'a> {
    pub client_namespace: &'a str,
    /// The Service's FQDN, `name.namespace.svc.cluster.local`.
    pub host: &'a str,
    pub service_namespace: &'a str,
    pub root_namespace: &'a str,
    /// The Service port.
    pub port: u16,
}

/// The rule that decides, and the TLS it sets on the port. Rules are named `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRule {
    pub pool: Pool,
    /// The rule host that matched, as a FQDN or wildcard.
    pub host: String,
    /// The oldest rule for that host in the pool: the one named.
    pub named: String,
    /// The rule whose `trafficPolicy` is used: the oldest that has one (Istio merges rules for
    /// one host, and the first traffic policy stays).
    pub policy_from: Option<String>,
    /// The index of the `portLevelSettings` entry that replaced the top-level `tls`.
    pub port_entry: Option<usize>,
    /// `None`: the rule sets no TLS on this port.
    pub tls: Option<ClientTls>,
}

/// The rule that sets the client's TLS for `lookup`, if any: the first pool with a matching
/// host wins; within it the most specific host.
pub(crate) fn client_rule(rules: &[DestinationRule], lookup: &Lookup) -> Option<ClientRule> {
    let pools = [
        (Pool::ClientNamespace, lookup.client_namespace),
        (Pool::ServiceNamespace, lookup.service_namespace),
        (Pool::RootNamespace, lookup.root_namespace),
    ];
    pools.into_iter().find_map(|(pool, namespace)| {
        // A client in the root namespace starts with the Service's namespace, so that the
        // mesh-wide catch-all rules there do not hide a Service's own rule.
        if pool == Pool::ClientNamespace && namespace == lookup.root_namespace {
            return None;
        }
        let candidates: Vec<&DestinationRule> = rules
            .iter()
            .filter(|rule| rule.meta.namespace == namespace && !rule.selects_workloads)
            .filter(|rule| pool == Pool::ClientNamespace || rule.exported_to(lookup.client_namespace))
            .collect();
        let host = most_specific(lookup.host, candidates.iter().map(|rule| rule.fqdn()))?;
        let mut same_host: Vec<&DestinationRule> = candidates.into_iter().filter(|rule| rule.fqdn() == host).collect();
        same_host.sort_by(|a, b| a.meta.precedence().cmp(&b.meta.precedence()));
        let policy_from = same_host.iter().copied().find(|rule| rule.traffic_policy.is_some());
        let (tls, port_entry) = policy_from
            .and_then(|rule| rule.traffic_policy.as_ref())
            .map_or((None, None), |policy| policy.tls_for(lookup.port));
        Some(ClientRule {
            pool,
            host,
            named: name(same_host[0]),
            policy_from: policy_from.map(name),
            port_entry,
            tls,
        })
    })
}

/// The rule host that matches `host` most specifically: the exact name, else the longest
/// wildcard whose suffix it ends with (`*` matches every host).
fn most_specific(host: &str, candidates: impl Iterator<Item = String>) -> Option<String> {
    let mut best: Option<String> = None;
    for candidate in candidates {
        if candidate == host {
            return Some(candidate);
        }
        let matches = candidate.strip_prefix('*').is_some_and(|suffix| host.ends_with(suffix));
        if matches && best.as_ref().is_none_or(|b| candidate.len() > b.len()) {
            best = Some(candidate);
        }
    }
    best
}

fn name(rule: &DestinationRule) -> String {
    format!("{}/{}", rule.meta.namespace, rule.meta.name)
}
