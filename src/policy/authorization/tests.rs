//! Table tests mirroring Istio's TCP builder cases (pilot/pkg/security/authz/builder/testdata/tcp)
//! and docs/authorization.md: each row is policies, a connection, and the verdict in words.

use crate::policy::authorization::{ConnectionFacts, Verdict};
use crate::policy::test_support::{policies, workload, ROOT};
use crate::policy::PolicySet;
use crate::tls::identity::SpiffeId;

/// An AuthorizationPolicy document; `spec` is flow YAML.
fn authz(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// A dry-run AuthorizationPolicy.
fn dry_run(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}, annotations: {{istio.io/dry-run: 'true'}}}}\nspec: {spec}\n"
    )
}

/// The connection a row describes.
#[derive(Clone, Copy)]
enum Peer {
    /// An mTLS peer `spiffe://<td>/ns/<ns>/sa/<sa>`.
    Mtls(&'static str),
    Plaintext,
}

struct Connection {
    peer: Peer,
    port: u16,
    source_ip: &'static str,
    sni: Option<&'static str>,
}

fn mtls(id: &'static str) -> Connection {
    Connection {
        peer: Peer::Mtls(id),
        port: 8080,
        source_ip: "10.0.0.5",
        sni: None,
    }
}

fn plaintext() -> Connection {
    Connection {
        peer: Peer::Plaintext,
        port: 8080,
        source_ip: "10.0.0.5",
        sni: None,
    }
}

impl Connection {
    fn port(self, port: u16) -> Self {
        Connection { port, ..self }
    }
    fn source_ip(self, source_ip: &'static str) -> Self {
        Connection { source_ip, ..self }
    }
    fn sni(self, sni: &'static str) -> Self {
        Connection { sni: Some(sni), ..self }
    }
}

const FOO_SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const BAR_ADMIN: &str = "spiffe://cluster.local/ns/bar/sa/admin";

/// The verdict in words: `allow ns/name[rule]`, `deny ns/name[rule]`, `allow (no_allow_policy)`,
/// `deny (no_allow_matched)`.
fn words(verdict: &Verdict) -> String {
    let what = if verdict.allowed { "allow" } else { "deny" };
    match &verdict.decider {
        Some(decider) => format!("{what} {}[{}]", decider.policy, decider.rule),
        None => format!("{what} ({})", verdict.reason.as_str()),
    }
}

fn verdict_in(set: &PolicySet, trust_domain: &str, connection: &Connection) -> Verdict {
    let workload = workload("foo", &[("app", "web")]);
    let authorizer = set.authorizer(&workload, trust_domain);
    let peer: Option<SpiffeId> = match connection.peer {
        Peer::Mtls(id) => Some(id.parse().expect("a test SPIFFE ID")),
        Peer::Plaintext => None,
    };
    authorizer.verdict(&ConnectionFacts {
        peer: peer.as_ref(),
        source_ip: Some(connection.source_ip.parse().unwrap()),
        destination_ip: Some("10.0.0.9".parse().unwrap()),
        port: connection.port,
        sni: connection.sni,
    })
}

/// Runs rows of (name, documents, connection, expected words) for workload foo/app=web.
fn table(rows: Vec<(&str, Vec<String>, Connection, &str)>) {
    for (name, documents, connection, expected) in rows {
        let set = policies(&documents);
        assert_eq!(
            words(&verdict_in(&set, "cluster.local", &connection)),
            expected,
            "{name}"
        );
    }
}

#[test]
fn order_deny_then_allow_and_no_allow_policy_allows() {
    table(vec![
        ("no policy allows", vec![], plaintext(), "allow (no_allow_policy)"),
        (
            "a matching DENY denies even when an ALLOW matches too",
            vec![
                authz("foo", "allow-all", "{rules: [{}]}"),
                authz(
                    "foo",
                    "deny-sleep",
                    "{action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]}",
                ),
            ],
            mtls(FOO_SLEEP),
            "deny foo/deny-sleep[0]",
        ),
        (
            "a DENY that does not match leaves the decision to ALLOW",
            vec![authz(
                "foo",
                "deny-bar",
                "{action: DENY, rules: [{from: [{source: {namespaces: [bar]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
        (
            "ALLOW policies apply and none matches: deny",
            vec![authz(
                "foo",
                "only-bar",
                "{rules: [{from: [{source: {namespaces: [bar]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "the deciding rule is named by its index",
            vec![authz(
                "foo",
                "two",
                "{rules: [{from: [{source: {namespaces: [bar]}}]}, {from: [{source: {namespaces: [foo]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow foo/two[1]",
        ),
        (
            "spec: {} as ALLOW matches nothing and so denies all",
            vec![authz("foo", "empty", "{}")],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "a rule {} matches everything",
            vec![authz("foo", "any", "{rules: [{}]}")],
            plaintext(),
            "allow foo/any[0]",
        ),
        (
            "CUSTOM acts as DENY",
            vec![authz(
                "foo",
                "ext",
                "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {ports: ['8080']}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny foo/ext[0]",
        ),
        (
            "CUSTOM acts as DENY before an ALLOW that matches",
            vec![
                authz("foo", "allow-all", "{rules: [{}]}"),
                authz("foo", "ext", "{action: CUSTOM, provider: {name: opa}, rules: [{}]}"),
            ],
            plaintext(),
            "deny foo/ext[0]",
        ),
        (
            "AUDIT never decides",
            vec![authz("foo", "audit", "{action: AUDIT, rules: [{}]}")],
            plaintext(),
            "allow (no_allow_policy)",
        ),
    ]);
}

#[test]
fn selection_accumulates_root_and_workload_namespace_and_root_selectors_match_everywhere() {
    table(vec![
        (
            "a root-namespace policy without selector applies mesh-wide",
            vec![authz(ROOT, "mesh-deny", "{action: DENY, rules: [{from: [{source: {namespaces: [foo]}}]}]}")],
            mtls(FOO_SLEEP),
            "deny istio-system/mesh-deny[0]",
        ),
        (
            "a root-namespace selector matches a workload in another namespace",
            vec![authz(ROOT, "web-only-bar", "{selector: {matchLabels: {app: web}}, rules: [{from: [{source: {namespaces: [bar]}}]}]}")],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "a root-namespace selector that does not match the labels does not apply",
            vec![authz(ROOT, "db-only", "{selector: {matchLabels: {app: db}}, rules: [{from: [{source: {namespaces: [bar]}}]}]}")],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
        (
            "root and namespace ALLOW policies accumulate: either may allow",
            vec![
                authz(ROOT, "mesh-bar", "{rules: [{from: [{source: {namespaces: [bar]}}]}]}"),
                authz("foo", "ns-foo", "{rules: [{from: [{source: {namespaces: [foo]}}]}]}"),
            ],
            mtls(FOO_SLEEP),
            "allow foo/ns-foo[0]",
        ),
        (
            "a policy of another namespace does not apply",
            vec![authz("bar", "deny-all", "{action: DENY, rules: [{}]}")],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
        (
            "a selector that does not match in the workload's namespace does not apply",
            vec![authz("foo", "db", "{selector: {matchLabels: {app: db}}, action: DENY, rules: [{}]}")],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
        (
            "a policy with targetRefs is for gateways and is ignored",
            vec![authz("foo", "gw", "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], action: DENY, rules: [{}]}")],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
    ]);
}

#[test]
fn http_only_fields_drop_allow_rules_and_vanish_from_deny_rules() {
    table(vec![
        (
            "an ALLOW whose only rule has methods denies all TCP",
            vec![authz("foo", "get", "{rules: [{to: [{operation: {methods: [GET]}}]}]}")],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "an ALLOW whose only rule has methods denies plaintext too",
            vec![authz(
                "foo",
                "get",
                "{rules: [{to: [{operation: {methods: [GET], ports: ['8080']}}]}]}",
            )],
            plaintext(),
            "deny (no_allow_matched)",
        ),
        (
            "an ALLOW rule with HTTP fields is dropped but its TCP sibling rule still allows",
            vec![authz(
                "foo",
                "mixed",
                "{rules: [{to: [{operation: {paths: [/admin]}}]}, {from: [{source: {namespaces: [foo]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow foo/mixed[1]",
        ),
        (
            "an ALLOW with a request.headers condition is dropped",
            vec![authz(
                "foo",
                "hdr",
                "{rules: [{when: [{key: 'request.headers[x-user]', values: [me]}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "a DENY with only paths denies all TCP",
            vec![authz(
                "foo",
                "no-admin",
                "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny foo/no-admin[0]",
        ),
        (
            "a DENY with only paths denies plaintext too",
            vec![authz(
                "foo",
                "no-admin",
                "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
            )],
            plaintext(),
            "deny foo/no-admin[0]",
        ),
        (
            "a DENY keeps its TCP fields when HTTP ones are removed",
            vec![authz(
                "foo",
                "no-admin-9090",
                "{action: DENY, rules: [{to: [{operation: {paths: [/admin], ports: ['9090']}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
        (
            "a DENY with a requestPrincipals source matches any source",
            vec![authz(
                "foo",
                "jwt",
                "{action: DENY, rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}",
            )],
            plaintext(),
            "deny foo/jwt[0]",
        ),
    ]);
}

#[test]
fn identity_fields_and_plaintext() {
    table(vec![
        (
            "principals: ['*'] refuses plaintext",
            vec![authz(
                "foo",
                "mesh-only",
                "{rules: [{from: [{source: {principals: ['*']}}]}]}",
            )],
            plaintext(),
            "deny (no_allow_matched)",
        ),
        (
            "principals: ['*'] admits any mTLS peer",
            vec![authz(
                "foo",
                "mesh-only",
                "{rules: [{from: [{source: {principals: ['*']}}]}]}",
            )],
            mtls(BAR_ADMIN),
            "allow foo/mesh-only[0]",
        ),
        (
            "notNamespaces admits plaintext",
            vec![authz(
                "foo",
                "not-bar",
                "{rules: [{from: [{source: {notNamespaces: [bar]}}]}]}",
            )],
            plaintext(),
            "allow foo/not-bar[0]",
        ),
        (
            "notNamespaces refuses the named namespace",
            vec![authz(
                "foo",
                "not-bar",
                "{rules: [{from: [{source: {notNamespaces: [bar]}}]}]}",
            )],
            mtls(BAR_ADMIN),
            "deny (no_allow_matched)",
        ),
        (
            "notPrincipals: ['*'] matches only peers without identity",
            vec![authz(
                "foo",
                "deny-plain",
                "{action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}",
            )],
            plaintext(),
            "deny foo/deny-plain[0]",
        ),
        (
            "notPrincipals: ['*'] does not match an mTLS peer",
            vec![authz(
                "foo",
                "deny-plain",
                "{action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow (no_allow_policy)",
        ),
        (
            "a principal prefix",
            vec![authz(
                "foo",
                "p",
                "{rules: [{from: [{source: {principals: ['cluster.local/ns/foo/*']}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow foo/p[0]",
        ),
        (
            "a principal suffix",
            vec![authz(
                "foo",
                "s",
                "{rules: [{from: [{source: {principals: ['*/sa/admin']}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "a bare service account is in the policy's namespace",
            vec![authz(
                "foo",
                "sa",
                "{rules: [{from: [{source: {serviceAccounts: [sleep]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow foo/sa[0]",
        ),
        (
            "a namespaced service account must match both",
            vec![authz(
                "foo",
                "sa",
                "{rules: [{from: [{source: {serviceAccounts: [bar/sleep]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "source.namespace in when",
            vec![authz(
                "foo",
                "w",
                "{rules: [{when: [{key: source.namespace, values: [foo]}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow foo/w[0]",
        ),
        (
            "source.principal notValues admits plaintext",
            vec![authz(
                "foo",
                "w",
                "{rules: [{when: [{key: source.principal, notValues: ['cluster.local/ns/bar/sa/admin']}]}]}",
            )],
            plaintext(),
            "allow foo/w[0]",
        ),
        (
            "trustDomains",
            vec![authz(
                "foo",
                "td",
                "{rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]}",
            )],
            mtls(FOO_SLEEP),
            "allow foo/td[0]",
        ),
    ]);
}

#[test]
fn network_fields() {
    table(vec![
        (
            "ports are workload ports",
            vec![authz("foo", "port", "{rules: [{to: [{operation: {ports: ['8080']}}]}]}")],
            plaintext().port(8080),
            "allow foo/port[0]",
        ),
        (
            "another workload port is not matched",
            vec![authz("foo", "port", "{rules: [{to: [{operation: {ports: ['8080']}}]}]}")],
            plaintext().port(9090),
            "deny (no_allow_matched)",
        ),
        (
            "notPorts",
            vec![authz("foo", "np", "{action: DENY, rules: [{to: [{operation: {notPorts: ['8080']}}]}]}")],
            plaintext().port(9090),
            "deny foo/np[0]",
        ),
        (
            "destination.port in when",
            vec![authz("foo", "dp", "{rules: [{when: [{key: destination.port, values: ['9090']}]}]}")],
            plaintext().port(9090),
            "allow foo/dp[0]",
        ),
        (
            "ipBlocks with a CIDR",
            vec![authz("foo", "ip", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]}")],
            plaintext().source_ip("10.0.0.77"),
            "allow foo/ip[0]",
        ),
        (
            "ipBlocks with a bare address does not match another",
            vec![authz("foo", "ip", "{rules: [{from: [{source: {ipBlocks: [10.0.0.1]}}]}]}")],
            plaintext().source_ip("10.0.0.2"),
            "deny (no_allow_matched)",
        ),
        (
            "notRemoteIpBlocks",
            vec![authz("foo", "rip", "{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/8]}}]}]}")],
            plaintext().source_ip("192.0.2.1"),
            "deny foo/rip[0]",
        ),
        (
            "source.ip and remote.ip in when",
            vec![authz("foo", "w", "{rules: [{when: [{key: source.ip, values: [10.0.0.0/8]}, {key: remote.ip, notValues: [10.0.0.6]}]}]}")],
            plaintext(),
            "allow foo/w[0]",
        ),
        (
            "destination.ip in when",
            vec![authz("foo", "w", "{rules: [{when: [{key: destination.ip, values: [10.0.0.0/30]}]}]}")],
            plaintext(),
            "deny (no_allow_matched)",
        ),
        (
            "connection.sni with a suffix",
            vec![authz("foo", "sni", "{rules: [{when: [{key: connection.sni, values: ['*.foo.svc.cluster.local']}]}]}")],
            mtls(FOO_SLEEP).sni("web.foo.svc.cluster.local"),
            "allow foo/sni[0]",
        ),
        (
            "connection.sni without an SNI does not match",
            vec![authz("foo", "sni", "{rules: [{when: [{key: connection.sni, values: ['*']}]}]}")],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "from, to and when are ANDed",
            vec![authz(
                "foo",
                "and",
                "{rules: [{from: [{source: {namespaces: [foo]}}], to: [{operation: {ports: ['8080']}}], when: [{key: source.ip, values: [192.0.2.0/24]}]}]}",
            )],
            mtls(FOO_SLEEP),
            "deny (no_allow_matched)",
        ),
        (
            "from entries are ORed",
            vec![authz("foo", "or", "{rules: [{from: [{source: {namespaces: [bar]}}, {source: {ipBlocks: [10.0.0.5]}}]}]}")],
            plaintext(),
            "allow foo/or[0]",
        ),
    ]);
}

#[test]
fn a_principal_in_cluster_local_is_read_in_the_mesh_trust_domain() {
    let set = policies(&[authz(
        "foo",
        "sleep",
        "{rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]}",
    )]);
    let peer = mtls("spiffe://example.org/ns/foo/sa/sleep");
    assert_eq!(words(&verdict_in(&set, "example.org", &peer)), "allow foo/sleep[0]");
    let set = policies(&[authz(
        "foo",
        "sleep",
        "{rules: [{from: [{source: {principals: [other.org/ns/foo/sa/sleep]}}]}]}",
    )]);
    assert_eq!(
        words(&verdict_in(&set, "example.org", &peer)),
        "deny (no_allow_matched)"
    );
}

#[test]
fn dry_run_policies_are_evaluated_but_never_enforced() {
    let set = policies(&[dry_run("foo", "shadow-deny", "{action: DENY, rules: [{}]}")]);
    let verdict = verdict_in(&set, "cluster.local", &plaintext());
    assert_eq!(words(&verdict), "allow (no_allow_policy)");
    let shadow = verdict.shadow_deny.expect("a dry-run DENY result");
    assert!(!shadow.allowed);
    assert_eq!(shadow.decider.unwrap().policy.as_ref(), "foo/shadow-deny");

    // A dry-run ALLOW does not count as an ALLOW: with no enforced ALLOW, the connection is
    // allowed, and the shadow says the dry-run ALLOW would have denied it.
    let set = policies(&[dry_run(
        "foo",
        "shadow-allow",
        "{rules: [{from: [{source: {namespaces: [bar]}}]}]}",
    )]);
    let verdict = verdict_in(&set, "cluster.local", &mtls(FOO_SLEEP));
    assert_eq!(words(&verdict), "allow (no_allow_policy)");
    assert_eq!(
        verdict.shadow_allow,
        Some(crate::policy::authorization::Shadow {
            allowed: false,
            decider: None
        })
    );
    assert_eq!(verdict.dry_run().count(), 1);
}

#[test]
fn audit_policies_record_the_rule_that_matched() {
    let set = policies(&[authz(
        "foo",
        "audit",
        "{action: AUDIT, rules: [{to: [{operation: {ports: ['8080']}}]}]}",
    )]);
    let verdict = verdict_in(&set, "cluster.local", &plaintext());
    assert!(verdict.allowed);
    assert_eq!(verdict.audit.unwrap().policy.as_ref(), "foo/audit");
}

#[test]
fn the_policies_in_force_are_listed_in_evaluation_order() {
    let set = policies(&[
        authz("foo", "allow", "{rules: [{}]}"),
        authz(ROOT, "deny", "{action: DENY, rules: [{}]}"),
        dry_run("foo", "dry", "{rules: [{}]}"),
    ]);
    let authorizer = set.authorizer(&workload("foo", &[]), "cluster.local");
    let listed: Vec<String> = authorizer
        .policies()
        .map(|p| format!("{} {} {}", p.policy, p.action.as_str(), p.dry_run))
        .collect();
    assert_eq!(
        listed,
        [
            "istio-system/deny DENY false",
            "foo/allow ALLOW false",
            "foo/dry ALLOW true"
        ]
    );
}

/// The validation error for one AuthorizationPolicy in `foo`, as the operator reads it after
/// `p.yaml: document 0 (AuthorizationPolicy foo/p): `.
fn refused(metadata_extra: &str, spec: &str) -> String {
    let text = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: foo{metadata_extra}}}\nspec: {spec}\n"
    );
    let message = PolicySet::parse_str(&text, "p.yaml")
        .expect_err("the policy is invalid")
        .to_string();
    message
        .strip_prefix("p.yaml: document 0 (AuthorizationPolicy foo/p): ")
        .unwrap_or(&message)
        .to_string()
}

#[test]
fn validation_refuses_what_istio_refuses() {
    let cases = [
        ("", "{action: allow}", "spec.action: \"allow\" is not one of ALLOW, DENY, AUDIT, CUSTOM"),
        ("", "{action: DENY}", "spec: DENY without rules is meaningless as it is never triggered; add an empty rule `{}` to trigger it for every connection"),
        ("", "{action: CUSTOM, provider: {name: opa}}", "spec: CUSTOM without rules is meaningless as it is never triggered; add an empty rule `{}` to trigger it for every connection"),
        ("", "{action: CUSTOM, rules: [{}]}", "spec.provider: is required"),
        ("", "{action: CUSTOM, provider: {name: ''}, rules: [{}]}", "spec.provider.name: empty value not allowed"),
        ("", "{provider: {name: opa}, rules: [{}]}", "spec.provider: a provider is only allowed with the CUSTOM action, not ALLOW"),
        ("", "{action: CUSTOM, provider: {name: opa}, rules: [{from: [{source: {principals: [a]}}]}]}", "spec.rules[0].from[0].source.principals: principals is not supported with the CUSTOM action"),
        ("", "{rules: [{from: []}]}", "spec.rules[0].from: must not be empty"),
        ("", "{rules: [{to: []}]}", "spec.rules[0].to: must not be empty"),
        ("", "{rules: [{from: [{}]}]}", "spec.rules[0].from[0].source: is required"),
        ("", "{rules: [{from: [{source: {}}]}]}", "spec.rules[0].from[0].source: must not be empty: name at least one field"),
        ("", "{rules: [{to: [{operation: {}}]}]}", "spec.rules[0].to[0].operation: must not be empty: name at least one field"),
        ("", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}", "spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR block: prefix length out of range"),
        ("", "{rules: [{from: [{source: {notRemoteIpBlocks: [example.com]}}]}]}", "spec.rules[0].from[0].source.notRemoteIpBlocks[0]: \"example.com\" is not an IP address or CIDR block: not an IP address"),
        ("", "{rules: [{to: [{operation: {ports: ['65536']}}]}]}", "spec.rules[0].to[0].operation.ports[0]: \"65536\" is not a port number (0..65535)"),
        ("", "{rules: [{to: [{operation: {notPorts: [http]}}]}]}", "spec.rules[0].to[0].operation.notPorts[0]: \"http\" is not a port number (0..65535)"),
        ("", "{rules: [{from: [{source: {principals: ['']}}]}]}", "spec.rules[0].from[0].source.principals[0]: empty value not allowed"),
        ("", "{rules: [{from: [{source: {serviceAccounts: [a], namespaces: [b]}}]}]}", "spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals"),
        ("", "{rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]}", "spec.rules[0].from[0].source.serviceAccounts[0]: \"ns/*\" is not a service account: wildcards are not allowed"),
        ("", "{rules: [{from: [{source: {trustDomains: ['a*b']}}]}]}", "spec.rules[0].from[0].source.trustDomains[0]: \"a*b\": at most one `*`, at the start or the end"),
        ("", "{rules: [{when: [{key: request.foo, values: [x]}]}]}", "spec.rules[0].when[0].key: \"request.foo\" is not a supported `when` key: it is not a key Istio knows"),
        ("", "{rules: [{when: [{key: destination.namespace, values: [x]}]}]}", "spec.rules[0].when[0].key: \"destination.namespace\" is not a supported `when` key: it is replaced by the policy's metadata.namespace"),
        ("", "{rules: [{when: [{key: 'request.headers', values: [x]}]}]}", "spec.rules[0].when[0].key: \"request.headers\" is not a supported `when` key: should have the form a[b]"),
        ("", "{rules: [{when: [{key: source.ip}]}]}", "spec.rules[0].when[0]: at least one of `values` or `notValues` must be set"),
        ("", "{rules: [{when: [{key: destination.port, values: ['99999']}]}]}", "spec.rules[0].when[0].values[0]: \"99999\" is not a port number (0..65535)"),
        ("", "{rules: [{when: [{key: source.ip, notValues: [bad]}]}]}", "spec.rules[0].when[0].notValues[0]: \"bad\" is not an IP address or CIDR block: not an IP address"),
        ("", "{selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}}", "spec: only one of selector and targetRef(s) can be set"),
        (", annotations: {istio.io/dry-run: 'true'}", "{action: AUDIT, rules: [{}]}", "metadata.annotations[\"istio.io/dry-run\"]: the dry-run annotation is only supported on ALLOW and DENY policies, not AUDIT"),
        (", annotations: {istio.io/dry-run: 'true'}", "{action: CUSTOM, provider: {name: opa}, rules: [{}]}", "metadata.annotations[\"istio.io/dry-run\"]: the dry-run annotation is only supported on ALLOW and DENY policies, not CUSTOM"),
        (", annotations: {istio.io/dry-run: 'yes'}", "{rules: [{}]}", "metadata.annotations[\"istio.io/dry-run\"]: \"yes\" is not one of a boolean (true, True, TRUE, t, T, 1 or their false forms)"),
        ("", "{rules: [{from: [{source: {principal: [a]}}]}]}", "spec.rules[0].from[0].source.principal: unknown field; did you mean `principals`?"),
        ("", "{rules: [{to: [{operation: {port: ['80']}}]}]}", "spec.rules[0].to[0].operation.port: unknown field; did you mean `ports`?"),
        ("", "{rule: [{}]}", "spec.rule: unknown field; did you mean `rules`?"),
        ("", "{rules: [{when: [{key: source.ip, value: [10.0.0.1]}]}]}", "spec.rules[0].when[0].value: unknown field; did you mean `values`?"),
    ];
    for (metadata, spec, expected) in cases {
        assert_eq!(refused(metadata, spec), expected, "{spec}");
    }
}

#[test]
fn dry_run_takes_go_booleans() {
    for value in ["1", "t", "True", "TRUE"] {
        let text = format!(
            "{{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {{name: p, namespace: foo, \
             annotations: {{istio.io/dry-run: '{value}'}}}}, spec: {{action: DENY, rules: [{{}}]}}}}"
        );
        let set = PolicySet::parse_str(&text, "p.yaml").unwrap().set;
        let verdict = set
            .authorizer(&workload("foo", &[]), "cluster.local")
            .verdict(&ConnectionFacts {
                peer: None,
                source_ip: None,
                destination_ip: None,
                port: 80,
                sni: None,
            });
        assert!(verdict.allowed, "{value}");
        assert!(verdict.shadow_deny.is_some(), "{value}");
    }
}

#[test]
fn warnings_name_target_refs_custom_and_http_only_fields() {
    let text = [
        authz(
            "foo",
            "gw",
            "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}}",
        ),
        authz("foo", "ext", "{action: CUSTOM, provider: {name: opa}, rules: [{}]}"),
        authz("foo", "get", "{rules: [{to: [{operation: {methods: [GET]}}]}]}"),
        authz(
            "foo",
            "no-admin",
            "{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
        ),
    ]
    .join("---\n");
    let warnings: Vec<String> = PolicySet::parse_str(&text, "w.yaml")
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "w.yaml: document 0 (AuthorizationPolicy foo/gw): spec.targetRef: targetRef(s) name a gateway or \
             waypoint, which a sidecar is not; the policy is ignored",
            "w.yaml: document 1 (AuthorizationPolicy foo/ext): spec.action: peerguard has no extension providers, \
             so this CUSTOM policy's rules act as DENY rules",
            "w.yaml: document 2 (AuthorizationPolicy foo/get): spec.rules[0].to[0].operation.methods: HTTP-only: \
             in an ALLOW policy the whole rule is dropped for TCP connections",
            "w.yaml: document 3 (AuthorizationPolicy foo/no-admin): spec.rules[0].to[0].operation.paths: \
             HTTP-only: ignored for TCP connections (an entry left empty matches anything)",
        ]
    );
}
