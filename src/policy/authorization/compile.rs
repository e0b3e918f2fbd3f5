//! The per-workload compiled form of a policy: rules as matchers over `ConnectionFacts`, made
//! once per policy generation so that a connection pays comparisons only.

use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::authorization::address::Cidr;
use crate::policy::authorization::model::{Action, Attribute, AuthorizationPolicy, Condition, Entry, Rule};
use crate::policy::authorization::ConnectionFacts;

/// Istio's default trust domain: a principal written in it means the mesh's own (Istio's
/// trust-domain migration, pilot/pkg/security/trustdomain/bundle.go).
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One policy, compiled for one workload.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    /// `namespace/name`, made once and shared by every verdict that names it.
    pub label: Arc<str>,
    pub action: Action,
    pub dry_run: bool,
    /// The rules a TCP connection can match, with their index in `spec.rules`.
    rules: Vec<(usize, CompiledRule)>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    from: Option<Vec<Vec<Test>>>,
    to: Option<Vec<Vec<Test>>>,
    when: Vec<Test>,
}

/// Any of the matcher's values, or with `negated` none of them.
#[derive(Debug, Clone)]
struct Test {
    matcher: Matcher,
    negated: bool,
}

#[derive(Debug, Clone)]
enum Matcher {
    Principal(Vec<Pattern>),
    Namespace(Vec<Pattern>),
    ServiceAccount(Vec<(Box<str>, Box<str>)>),
    TrustDomain(Vec<Pattern>),
    SourceIp(Vec<Cidr>),
    DestinationIp(Vec<Cidr>),
    Port(Vec<u16>),
    Sni(Vec<Pattern>),
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (anything present).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl CompiledPolicy {
    pub fn new(policy: &AuthorizationPolicy, trust_domain: &str) -> Self {
        let label: Arc<str> = format!("{}/{}", policy.meta.namespace, policy.meta.name).into();
        let context = Context {
            namespace: &policy.meta.namespace,
            trust_domain,
        };
        let rules = policy
            .rules
            .iter()
            .enumerate()
            // An ALLOW rule that needs HTTP can never be satisfied by a TCP connection.
            .filter(|(_, rule)| !(policy.action == Action::Allow && rule.needs_http()))
            .map(|(index, rule)| (index, context.rule(rule)))
            .collect();
        CompiledPolicy {
            label,
            action: policy.action,
            dry_run: policy.dry_run,
            rules,
        }
    }

    /// The index (in `spec.rules`) of the first rule that matches.
    pub fn matching_rule(&self, facts: &ConnectionFacts) -> Option<usize> {
        self.rules
            .iter()
            .find(|(_, rule)| rule.matches(facts))
            .map(|&(index, _)| index)
    }
}

impl CompiledRule {
    fn matches(&self, facts: &ConnectionFacts) -> bool {
        let any_entry = |entries: &Option<Vec<Vec<Test>>>| {
            entries
                .as_ref()
                .is_none_or(|entries| entries.iter().any(|entry| entry.iter().all(|test| test.matches(facts))))
        };
        any_entry(&self.from) && any_entry(&self.to) && self.when.iter().all(|test| test.matches(facts))
    }
}

impl Test {
    fn matches(&self, facts: &ConnectionFacts) -> bool {
        self.matcher.any(facts) != self.negated
    }
}

impl Matcher {
    /// Whether any value matches. A fact the connection lacks (no peer identity, no SNI, an
    /// unknown address) matches no value, so positive fields fail and `not*` fields hold.
    fn any(&self, facts: &ConnectionFacts) -> bool {
        match self {
            Matcher::Principal(patterns) => facts.peer.is_some_and(|peer| {
                let principal = [
                    peer.trust_domain.as_str(),
                    "/ns/",
                    &peer.namespace,
                    "/sa/",
                    &peer.service_account,
                ];
                patterns.iter().any(|pattern| pattern.matches_parts(&principal))
            }),
            Matcher::Namespace(patterns) => facts
                .peer
                .is_some_and(|peer| patterns.iter().any(|p| p.matches(&peer.namespace))),
            Matcher::ServiceAccount(accounts) => facts.peer.is_some_and(|peer| {
                accounts
                    .iter()
                    .any(|(namespace, account)| **namespace == peer.namespace && **account == peer.service_account)
            }),
            Matcher::TrustDomain(patterns) => facts
                .peer
                .is_some_and(|peer| patterns.iter().any(|p| p.matches(&peer.trust_domain))),
            Matcher::SourceIp(blocks) => contains(blocks, facts.source_ip),
            Matcher::DestinationIp(blocks) => contains(blocks, facts.destination_ip),
            Matcher::Port(ports) => ports.contains(&facts.port),
            Matcher::Sni(patterns) => facts.sni.is_some_and(|sni| patterns.iter().any(|p| p.matches(sni))),
        }
    }
}

fn contains(blocks: &[Cidr], address: Option<IpAddr>) -> bool {
    address.is_some_and(|address| blocks.iter().any(|block| block.contains(address)))
}

impl Pattern {
    fn new(value: &str) -> Pattern {
        if value == "*" {
            Pattern::Any
        } else if let Some(suffix) = value.strip_prefix('*') {
            Pattern::Suffix(suffix.into())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Pattern::Prefix(prefix.into())
        } else {
            Pattern::Exact(value.into())
        }
    }

    fn matches(&self, text: &str) -> bool {
        self.matches_parts(&[text])
    }

    /// Matches the concatenation of `parts` without building it: a principal is compared per
    /// connection, and joining it would allocate.
    fn matches_parts(&self, parts: &[&str]) -> bool {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        match self {
            // Envoy's `.+`: present and non-empty.
            Pattern::Any => len > 0,
            Pattern::Exact(exact) => len == exact.len() && starts_with(parts, exact.as_bytes()),
            Pattern::Prefix(prefix) => starts_with(parts, prefix.as_bytes()),
            Pattern::Suffix(suffix) => ends_with(parts, suffix.as_bytes()),
        }
    }
}

/// Whether the concatenation of `parts` starts with `prefix`, compared a slice at a time.
fn starts_with(parts: &[&str], mut prefix: &[u8]) -> bool {
    for part in parts {
        let part = part.as_bytes();
        let n = part.len().min(prefix.len());
        if part[..n] != prefix[..n] {
            return false;
        }
        prefix = &prefix[n..];
    }
    prefix.is_empty()
}

/// Whether the concatenation of `parts` ends with `suffix`.
fn ends_with(parts: &[&str], mut suffix: &[u8]) -> bool {
    for part in parts.iter().rev() {
        let part = part.as_bytes();
        let n = part.len().min(suffix.len());
        if part[part.len() - n..] != suffix[suffix.len() - n..] {
            return false;
        }
        suffix = &suffix[..suffix.len() - n];
    }
    suffix.is_empty()
}

/// What compiling a policy's values needs to know.
struct Context<'a> {
    /// The policy's namespace: a bare service account is in it.
    namespace: &'a str,
    /// The mesh's trust domain (`--trust-domain`).
    trust_domain: &'a str,
}

impl Context<'_> {
    fn rule(&self, rule: &Rule) -> CompiledRule {
        let entries = |entries: &Option<Vec<Entry>>| {
            entries
                .as_ref()
                .map(|entries| entries.iter().map(|entry| self.tests(entry)).collect())
        };
        CompiledRule {
            from: entries(&rule.from),
            to: entries(&rule.to),
            when: self.tests(&rule.when),
        }
    }

    /// The tests of some conditions; HTTP-only ones are left out (what remains of an ALLOW
    /// rule has none: such rules were dropped whole).
    fn tests(&self, conditions: &[Condition]) -> Vec<Test> {
        let mut tests = Vec::new();
        for condition in conditions {
            for (values, negated) in [(&condition.values, false), (&condition.not_values, true)] {
                if values.is_empty() {
                    continue;
                }
                if let Some(matcher) = self.matcher(condition.attribute, values) {
                    tests.push(Test { matcher, negated });
                }
            }
        }
        tests
    }

    /// Values were validated at load, so what does not parse here cannot occur.
    fn matcher(&self, attribute: Attribute, values: &[String]) -> Option<Matcher> {
        let patterns = |values: &[String]| values.iter().map(|v| Pattern::new(v)).collect();
        let blocks = |values: &[String]| values.iter().filter_map(|v| Cidr::parse(v).ok()).collect();
        Some(match attribute {
            Attribute::Principal => Matcher::Principal(
                values
                    .iter()
                    .map(|value| Pattern::new(&self.principal(value)))
                    .collect(),
            ),
            Attribute::Namespace => Matcher::Namespace(patterns(values)),
            Attribute::ServiceAccount => Matcher::ServiceAccount(
                values
                    .iter()
                    .map(|value| match value.split_once('/') {
                        Some((namespace, account)) => (namespace.into(), account.into()),
                        None => (self.namespace.into(), value.as_str().into()),
                    })
                    .collect(),
            ),
            Attribute::TrustDomain => Matcher::TrustDomain(patterns(values)),
            Attribute::SourceIp => Matcher::SourceIp(blocks(values)),
            Attribute::DestinationIp => Matcher::DestinationIp(blocks(values)),
            Attribute::DestinationPort => Matcher::Port(values.iter().filter_map(|v| v.parse().ok()).collect()),
            Attribute::Sni => Matcher::Sni(patterns(values)),
            Attribute::HttpOnly => return None,
        })
    }

    /// `cluster.local/ns/<ns>/sa/<sa>` is read in the mesh's own trust domain.
    fn principal(&self, value: &str) -> String {
        let segments: Vec<&str> = value.split('/').collect();
        match segments.as_slice() {
            [DEFAULT_TRUST_DOMAIN, "ns", namespace, "sa", account] => {
                format!("{}/ns/{namespace}/sa/{account}", self.trust_domain)
            }
            _ => value.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINCIPAL: [&str; 5] = ["cluster.local", "/ns/", "foo", "/sa/", "sleep"];

    #[test]
    fn patterns_match_a_principal_across_its_parts() {
        let matches = |value: &str| Pattern::new(value).matches_parts(&PRINCIPAL);
        assert!(matches("cluster.local/ns/foo/sa/sleep"));
        assert!(!matches("cluster.local/ns/foo/sa/slee"));
        assert!(!matches("cluster.local/ns/foo/sa/sleepy"));
        assert!(matches("cluster.local/ns/f*"));
        assert!(matches("cluster.local/ns/foo/sa/sleep*"));
        assert!(!matches("cluster.local/ns/bar/*"));
        assert!(matches("*/ns/foo/sa/sleep"));
        assert!(matches("*p"));
        assert!(!matches("*/sa/admin"));
        assert!(!matches("*x.cluster.local/ns/foo/sa/sleep"));
        assert!(matches("*"));
        assert!(!Pattern::Any.matches(""));
    }
}
