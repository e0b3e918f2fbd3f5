//! DestinationRule validation, the three pools, and STATUS, as tables.

use super::model::ClientTls::{self, Disable, IstioMutual, Mutual, Simple};
use super::resolve::{client_rule, Lookup, Pool};
use super::status::{status, TlsStatus};
use super::TlsQuery;
use crate::policy::test_support::{legacy, peer, policies, service, ROOT};
use crate::policy::MtlsMode::{self, Permissive, Strict};
use crate::policy::PolicySet;

/// A DestinationRule document; `spec` is flow YAML.
fn rule(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

fn rule_created(namespace: &str, name: &str, created: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\n\
         metadata: {{name: {name}, namespace: {namespace}, creationTimestamp: '{created}'}}\nspec: {spec}\n"
    )
}

fn error(document: &str) -> String {
    PolicySet::parse_str(document, "dr.yaml")
        .expect_err("the rule is invalid")
        .to_string()
}

#[test]
fn a_destination_rule_refuses_unknown_fields_and_bad_values_naming_the_field() {
    let at = "dr.yaml: document 0 (DestinationRule foo/r): ";
    let cases = [
        (
            "{host: a, trafficPolicy: {tsl: {mode: DISABLE}}}",
            "spec.trafficPolicy.tsl: unknown field; did you mean `tls`?",
        ),
        ("{hots: a}", "spec.hots: unknown field; did you mean `host`?"),
        (
            "{host: a, trafficPolicy: {tls: {mdoe: DISABLE}}}",
            "spec.trafficPolicy.tls.mdoe: unknown field; did you mean `mode`?",
        ),
        (
            "{host: a, trafficPolicy: {portLevelSetting: []}}",
            "spec.trafficPolicy.portLevelSetting: unknown field; did you mean `portLevelSettings`?",
        ),
        (
            "{host: a, trafficPolicy: {portLevelSettings: [{port: {numbr: 80}}]}}",
            "spec.trafficPolicy.portLevelSettings[0].port.numbr: unknown field; did you mean `number`?",
        ),
        (
            "{host: a, subsets: [{name: v1, trafficPolicy: {tls: {mode: istio_mutual}}}]}",
            "spec.subsets[0].trafficPolicy.tls.mode: \"istio_mutual\" is not one of DISABLE, SIMPLE, MUTUAL, \
             ISTIO_MUTUAL",
        ),
        (
            "{host: a, trafficPolicy: {portLevelSettings: [{port: {number: 0}, tls: {}}]}}",
            "spec.trafficPolicy.portLevelSettings[0].port.number: 0 is not a port number (1..65535)",
        ),
        ("{trafficPolicy: {}}", "spec.host: is required"),
        (
            "{host: 'a.*.local'}",
            "spec.host: \"a.*.local\" is not a host: a wildcard host is `*` or `*.` followed by a domain",
        ),
        (
            "{host: '*local'}",
            "spec.host: \"*local\" is not a host: a wildcard host is `*` or `*.` followed by a domain",
        ),
        ("{host: a, exportTo: ['']}", "spec.exportTo[0]: empty value not allowed"),
    ];
    for (spec, message) in cases {
        assert_eq!(error(&rule("foo", "r", spec)), format!("{at}{message}"), "{spec}");
    }
}

#[test]
fn every_networking_version_is_read_and_no_longer_counted_as_skipped() {
    for version in ["v1alpha3", "v1beta1", "v1"] {
        let text = format!(
            "apiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata: {{name: r, namespace: foo}}\n\
             spec: {{host: a}}\n"
        );
        let loaded = PolicySet::parse_str(&text, "dr.yaml").unwrap();
        assert_eq!(loaded.skipped_documents, 0, "{version}");
        assert_eq!(loaded.set.destination_rules().len(), 1, "{version}");
    }
}

/// One row of a lookup table: rules, the client's namespace, the Service port, what decides.
struct LookupCase {
    name: &'static str,
    rules: Vec<String>,
    client: &'static str,
    /// `name.namespace` of the Service.
    service: &'static str,
    port: u16,
    /// `(pool, matched host, rule named, tls)`, or `None` when no rule matches.
    expect: Option<(Pool, &'static str, &'static str, Option<ClientTls>)>,
}

fn run_lookups(cases: Vec<LookupCase>) {
    for case in cases {
        let set = policies(&case.rules);
        let (_, namespace) = case.service.split_once('.').expect("name.namespace");
        let host = format!("{}.svc.cluster.local", case.service);
        let found = client_rule(
            set.destination_rules(),
            &Lookup {
                client_namespace: case.client,
                host: &host,
                service_namespace: namespace,
                root_namespace: ROOT,
                port: case.port,
            },
        );
        let found = found.map(|rule| (rule.pool, rule.host, rule.named, rule.tls));
        let expect = case
            .expect
            .map(|(pool, host, named, tls)| (pool, host.to_string(), named.to_string(), tls));
        assert_eq!(found, expect, "{}", case.name);
    }
}

const MUTUAL: &str = "trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}";
const PLAIN: &str = "trafficPolicy: {tls: {mode: DISABLE}}";

fn spec(host: &str, rest: &str) -> String {
    format!("{{host: '{host}', {rest}}}")
}

/// The pools of Istio 1.4's `PushContext.DestinationRule` (pilot/pkg/model/push_context.go) and
/// the host matching of its `MostSpecificHostMatch`.
#[test]
fn the_first_pool_with_a_matching_host_decides() {
    run_lookups(vec![
        LookupCase {
            name: "no rule anywhere: nothing decides",
            rules: vec![],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: None,
        },
        LookupCase {
            name: "the client's namespace beats the Service's and the root's",
            rules: vec![
                rule("foo", "mine", &spec("httpbin.bar.svc.cluster.local", PLAIN)),
                rule("bar", "theirs", &spec("httpbin", MUTUAL)),
                rule(ROOT, "default", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::ClientNamespace,
                "httpbin.bar.svc.cluster.local",
                "foo/mine",
                Some(Disable),
            )),
        },
        LookupCase {
            name: "a private rule of the client's namespace still counts there",
            rules: vec![
                rule(
                    "foo",
                    "mine",
                    &spec("*.bar.svc.cluster.local", &format!("exportTo: ['.'], {PLAIN}")),
                ),
                rule(ROOT, "default", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::ClientNamespace,
                "*.bar.svc.cluster.local",
                "foo/mine",
                Some(Disable),
            )),
        },
        LookupCase {
            name: "the Service's namespace beats the root (the 1.1 task's httpbin-legacy rule)",
            rules: vec![
                rule(
                    "legacy",
                    "httpbin-legacy",
                    &spec("httpbin.legacy.svc.cluster.local", PLAIN),
                ),
                rule(ROOT, "default", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.legacy",
            port: 8000,
            expect: Some((
                Pool::ServiceNamespace,
                "httpbin.legacy.svc.cluster.local",
                "legacy/httpbin-legacy",
                Some(Disable),
            )),
        },
        LookupCase {
            name: "a private rule of the Service's namespace is not seen from another namespace",
            rules: vec![
                rule("bar", "private", &spec("httpbin", &format!("exportTo: ['.'], {PLAIN}"))),
                rule(ROOT, "default", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::RootNamespace,
                "*.local",
                "istio-system/default",
                Some(IstioMutual),
            )),
        },
        LookupCase {
            name: "a rule exported to the client's namespace by name is seen",
            rules: vec![rule(
                "bar",
                "shared",
                &spec("httpbin", &format!("exportTo: [foo], {PLAIN}")),
            )],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::ServiceNamespace,
                "httpbin.bar.svc.cluster.local",
                "bar/shared",
                Some(Disable),
            )),
        },
        LookupCase {
            name: "a short host is read in the rule's namespace, not the Service's",
            rules: vec![rule("foo", "short", &spec("httpbin", PLAIN))],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: None,
        },
        LookupCase {
            name: "a private root rule is ignored",
            rules: vec![rule(
                ROOT,
                "default",
                &spec("*.local", &format!("exportTo: ['.'], {MUTUAL}")),
            )],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: None,
        },
        LookupCase {
            name: "a client in the root namespace starts at the Service's namespace",
            rules: vec![
                rule(ROOT, "default", &spec("*.local", MUTUAL)),
                rule("bar", "own", &spec("*.bar.svc.cluster.local", PLAIN)),
            ],
            client: ROOT,
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::ServiceNamespace,
                "*.bar.svc.cluster.local",
                "bar/own",
                Some(Disable),
            )),
        },
        LookupCase {
            name: "a rule with a workloadSelector names clients tls-check cannot name, and is left out",
            rules: vec![rule(
                "foo",
                "selected",
                &spec(
                    "httpbin.bar.svc.cluster.local",
                    &format!("workloadSelector: {{matchLabels: {{app: sleep}}}}, {PLAIN}"),
                ),
            )],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: None,
        },
    ]);
}

/// Mirrors `TestSetDestinationRuleWithExportTo` (Istio 1.8, pilot/pkg/model/push_context_test.go)
/// for clients outside the root namespace. For a client in the root namespace Istio 1.8 also
/// searches that namespace's private rules first; Istio 1.1-1.4, and §8.1, do not.
#[test]
fn export_to_decides_which_namespaces_see_a_rule_as_istios_push_context_test_does() {
    let set = policies(&[
        rule(
            "test1",
            "rule1",
            "{host: httpbin.org, exportTo: ['.', ns1], trafficPolicy: {tls: {mode: SIMPLE}}}",
        ),
        rule(
            "test2",
            "rule2",
            "{host: httpbin.org, exportTo: [test2, ns1, test1], trafficPolicy: {tls: {}}}",
        ),
        rule(
            "test3",
            "rule3",
            "{host: httpbin.org, exportTo: [test1, test2, '*'], trafficPolicy: {tls: {mode: MUTUAL}}}",
        ),
        rule(ROOT, "rule4", &spec("httpbin.org", MUTUAL)),
        rule(
            ROOT,
            "rule1",
            &spec("httpbin.org", &format!("exportTo: ['.'], {PLAIN}")),
        ),
    ]);
    let cases = [
        ("test1", "test2", "test1/rule1"),
        ("test2", "test1", "test2/rule2"),
        ("test3", "test1", "test3/rule3"),
        ("ns1", "test1", "test1/rule1"),
        ("ns1", "random", "istio-system/rule4"),
        ("random", "random", "istio-system/rule4"),
        ("test3", "random", "test3/rule3"),
        (ROOT, "random", "istio-system/rule4"),
    ];
    for (client, service_namespace, named) in cases {
        let found = client_rule(
            set.destination_rules(),
            &Lookup {
                client_namespace: client,
                host: "httpbin.org",
                service_namespace,
                root_namespace: ROOT,
                port: 443,
            },
        );
        assert_eq!(
            found.map(|rule| rule.named).as_deref(),
            Some(named),
            "{client} -> {service_namespace}"
        );
    }
}

#[test]
fn within_a_pool_exact_hosts_beat_wildcards_and_longer_wildcards_beat_shorter() {
    run_lookups(vec![
        LookupCase {
            name: "exact beats every wildcard",
            rules: vec![
                rule(ROOT, "all", &spec("*", PLAIN)),
                rule(ROOT, "local", &spec("*.local", PLAIN)),
                rule(ROOT, "exact", &spec("httpbin.bar.svc.cluster.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::RootNamespace,
                "httpbin.bar.svc.cluster.local",
                "istio-system/exact",
                Some(IstioMutual),
            )),
        },
        LookupCase {
            name: "the longer wildcard wins",
            rules: vec![
                rule(ROOT, "all", &spec("*", PLAIN)),
                rule(ROOT, "bar", &spec("*.bar.svc.cluster.local", MUTUAL)),
                rule(ROOT, "local", &spec("*.local", PLAIN)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::RootNamespace,
                "*.bar.svc.cluster.local",
                "istio-system/bar",
                Some(IstioMutual),
            )),
        },
        LookupCase {
            name: "a wildcard of another namespace does not match",
            rules: vec![rule(ROOT, "foo", &spec("*.foo.svc.cluster.local", MUTUAL))],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: None,
        },
    ]);
}

#[test]
fn rules_for_one_host_merge_and_the_oldest_is_named_and_its_traffic_policy_wins() {
    run_lookups(vec![
        LookupCase {
            name: "the older rule's TLS wins over the newer one",
            rules: vec![
                rule_created(ROOT, "newer", "2020-02-01T00:00:00Z", &spec("*.local", PLAIN)),
                rule_created(ROOT, "older", "2020-01-01T00:00:00Z", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((Pool::RootNamespace, "*.local", "istio-system/older", Some(IstioMutual))),
        },
        LookupCase {
            name: "equal times fall to the smaller name",
            rules: vec![
                rule(ROOT, "b", &spec("*.local", PLAIN)),
                rule(ROOT, "a", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((Pool::RootNamespace, "*.local", "istio-system/a", Some(IstioMutual))),
        },
        LookupCase {
            name: "an oldest rule without a traffic policy takes the next one's (Istio's combineSingleDestinationRule)",
            rules: vec![
                rule_created(
                    ROOT,
                    "subsets",
                    "2020-01-01T00:00:00Z",
                    "{host: '*.local', subsets: [{name: v1}]}",
                ),
                rule_created(ROOT, "tls", "2020-02-01T00:00:00Z", &spec("*.local", MUTUAL)),
            ],
            client: "foo",
            service: "httpbin.bar",
            port: 8000,
            expect: Some((
                Pool::RootNamespace,
                "*.local",
                "istio-system/subsets",
                Some(IstioMutual),
            )),
        },
    ]);
}

/// Mirrors Istio 1.4's `SelectTrafficPolicyComponents` (pilot/pkg/networking/core/v1alpha3/cluster.go):
/// the first port entry for the port replaces the top-level settings whole, TLS included.
#[test]
fn the_first_port_level_entry_for_the_service_port_replaces_the_top_level_tls() {
    let ports = "trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, portLevelSettings: [\
        {port: {number: 8000}, tls: {mode: SIMPLE}}, {port: {number: 8000}, tls: {mode: MUTUAL}}, \
        {port: {number: 9000}, loadBalancer: {simple: ROUND_ROBIN}}, {port: {number: 7000}, tls: {}}]}";
    let case = |port: u16, tls: Option<ClientTls>| LookupCase {
        name: "port-level",
        rules: vec![rule("bar", "ports", &spec("httpbin", ports))],
        client: "foo",
        service: "httpbin.bar",
        port,
        expect: Some((
            Pool::ServiceNamespace,
            "httpbin.bar.svc.cluster.local",
            "bar/ports",
            tls,
        )),
    };
    run_lookups(vec![
        case(8000, Some(Simple)),
        case(9000, None),
        case(7000, Some(Disable)),
        case(80, Some(IstioMutual)),
    ]);
}

/// Mirrors Istio 1.4's `TestEvaluateTLSState` (pilot/pkg/proxy/envoy/v2/debug_test.go), except
/// that with auto mTLS off a client without TLS is judged as plaintext (docs/tls-check.md).
#[test]
fn status_is_ok_only_for_pairs_that_can_talk() {
    use MtlsMode::Disable as Off;
    use TlsStatus::{Auto, Conflict, Ok};
    // (server, client, auto mTLS off, auto mTLS on)
    let cases = [
        (Off, None, Ok, Auto),
        (Permissive, None, Ok, Auto),
        (Strict, None, Conflict, Auto),
        (Strict, Some(IstioMutual), Ok, Ok),
        (Off, Some(Disable), Ok, Ok),
        (Permissive, Some(Disable), Ok, Ok),
        (Permissive, Some(IstioMutual), Ok, Ok),
        (Strict, Some(Disable), Conflict, Conflict),
        (Strict, Some(Mutual), Conflict, Conflict),
        (Strict, Some(Simple), Conflict, Conflict),
        (Permissive, Some(Simple), Conflict, Conflict),
        (Permissive, Some(Mutual), Conflict, Conflict),
        (Off, Some(IstioMutual), Conflict, Conflict),
    ];
    for (server, client, without_auto, with_auto) in cases {
        assert_eq!(status(server, client, false), without_auto, "{server:?} {client:?}");
        assert_eq!(status(server, client, true), with_auto, "{server:?} {client:?} auto");
    }
}

fn query(client: &str, host: Option<&str>, auto_mtls: bool) -> TlsQuery {
    TlsQuery {
        client_namespace: client.to_string(),
        root_namespace: ROOT.to_string(),
        auto_mtls,
        host: host.map(str::to_string),
        port: None,
    }
}

/// The field guide's line (seeds/002): a STRICT MeshPolicy, no DestinationRule, auto mTLS off.
#[test]
fn a_strict_mesh_without_a_destination_rule_is_a_conflict_when_auto_mtls_is_off() {
    let set = policies(&[
        legacy("MeshPolicy", "", "default", "{peers: [{mtls: {}}]}"),
        service("bar", "foo", "{}", "{selector: {app: foo}, ports: [{port: 8000}]}"),
    ]);
    let pairs = set.tls_check(&query("default", None, false)).unwrap();
    let row = &pairs[0];
    assert_eq!((row.host.as_str(), row.port), ("foo.bar.svc.cluster.local", 8000));
    assert_eq!(row.server.mode, Strict);
    assert_eq!(row.status, TlsStatus::Conflict);
    assert!(row.client.is_none());
    let pairs = set.tls_check(&query("default", None, true)).unwrap();
    assert_eq!(pairs[0].status, TlsStatus::Auto);
}

#[test]
fn the_server_side_is_the_services_workload_on_its_target_port() {
    let set = policies(&[
        peer("bar", "default", "{mtls: {mode: STRICT}}"),
        peer(
            "bar",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, portLevelMtls: {80: {mode: PERMISSIVE}}}",
        ),
        service(
            "bar",
            "httpbin",
            "{}",
            "{selector: {app: httpbin}, ports: [{port: 8000, targetPort: 80}, {port: 9000}]}",
        ),
    ]);
    let pairs = set
        .tls_check(&query("foo", Some("httpbin.bar.svc.cluster.local"), true))
        .unwrap();
    let modes: Vec<_> = pairs.iter().map(|p| (p.port, p.target, p.server.mode)).collect();
    assert_eq!(modes, [(8000, Some(80), Permissive), (9000, Some(9000), Strict)]);
}

#[test]
fn a_host_no_service_has_is_an_error_naming_it() {
    let set = policies(&[service("bar", "httpbin", "{}", "{ports: [{port: 8000}]}")]);
    let error = set
        .tls_check(&TlsQuery {
            port: Some(81),
            ..query("foo", Some("httpbin.bar.svc.cluster.local"), true)
        })
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no Service in the policy set has httpbin.bar.svc.cluster.local:81 (hosts are \
         `name.namespace.svc.cluster.local`)"
    );
}
