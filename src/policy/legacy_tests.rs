//! Legacy resolution and the eras, in the terms of docs/policy.md#legacy-formats. The workload
//! is the Istio samples' httpbin: Service port 8000 (`http`) -> container port 80.

use crate::policy::test_support::{legacy, peer, policies, run_cases, service, workload, Case, ROOT};
use crate::policy::MtlsMode::{Disable, Permissive, Strict};

const MTLS: &str = "{peers: [{mtls: {}}]}";
const NO_PEERS: &str = "{}";

fn httpbin_service(namespace: &str, annotations: &str) -> String {
    service(
        namespace,
        "httpbin",
        annotations,
        "{selector: {app: httpbin}, ports: [{name: http, port: 8000, targetPort: 80}]}",
    )
}

fn mesh(spec: &str) -> String {
    legacy("MeshPolicy", "", "default", spec)
}

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    legacy("Policy", namespace, name, spec)
}

/// The tables' workload: httpbin in namespace bar.
fn run(cases: Vec<Case>) {
    run_cases(&workload("bar", &[("app", "httpbin"), ("version", "v1")]), cases);
}

#[test]
fn the_most_specific_legacy_policy_replaces_the_others() {
    run(vec![
        Case {
            name: "the default MeshPolicy covers every port",
            documents: vec![mesh(MTLS)],
            port: 80,
            expect: (Strict, "MeshPolicy default legacy_mesh"),
        },
        Case {
            name: "mtls PERMISSIVE is PERMISSIVE",
            documents: vec![mesh("{peers: [{mtls: {mode: PERMISSIVE}}]}")],
            port: 80,
            expect: (Permissive, "MeshPolicy default legacy_mesh"),
        },
        Case {
            name: "a MeshPolicy not named default is ignored, leaving the legacy default",
            documents: vec![legacy("MeshPolicy", "", "other", MTLS)],
            port: 80,
            expect: (Disable, ""),
        },
        Case {
            name: "the namespace policy replaces the mesh policy, without inheriting from it",
            documents: vec![mesh(MTLS), policy("bar", "default", NO_PEERS)],
            port: 80,
            expect: (Disable, "Policy bar/default legacy_namespace"),
        },
        Case {
            name: "a namespace policy not named default is still used",
            documents: vec![policy("bar", "strict", MTLS)],
            port: 80,
            expect: (Strict, "Policy bar/strict legacy_namespace"),
        },
        Case {
            name: "a legacy service policy without peers turns mTLS off under a STRICT namespace policy",
            documents: vec![
                httpbin_service("bar", "{}"),
                policy("bar", "default", MTLS),
                policy("bar", "overwrite-example", "{targets: [{name: httpbin}]}"),
            ],
            port: 80,
            expect: (Disable, "Policy bar/overwrite-example legacy_service"),
        },
        Case {
            name: "a target without ports covers ports the Service does not list",
            documents: vec![
                httpbin_service("bar", "{}"),
                policy("bar", "httpbin", "{targets: [{name: httpbin}], peers: [{mtls: {}}]}"),
            ],
            port: 9999,
            expect: (Strict, "Policy bar/httpbin legacy_service"),
        },
        Case {
            name: "a target port by name maps to the workload port through targetPort",
            documents: vec![
                httpbin_service("bar", "{}"),
                policy(
                    "bar",
                    "httpbin",
                    "{targets: [{name: httpbin, ports: [{name: http}]}], peers: [{mtls: {}}]}",
                ),
            ],
            port: 80,
            expect: (Strict, "Policy bar/httpbin legacy_service"),
        },
        Case {
            name: "a target port by number is a Service port, not the workload port",
            documents: vec![
                httpbin_service("bar", "{}"),
                policy(
                    "bar",
                    "httpbin",
                    "{targets: [{name: httpbin, ports: [{number: 8000}]}], peers: [{mtls: {}}]}",
                ),
            ],
            port: 80,
            expect: (Strict, "Policy bar/httpbin legacy_service"),
        },
        Case {
            name: "a port no legacy policy covers accepts plaintext only",
            documents: vec![
                httpbin_service("bar", "{}"),
                policy(
                    "bar",
                    "httpbin",
                    "{targets: [{name: httpbin, ports: [{number: 1234}]}], peers: [{mtls: {}}]}",
                ),
            ],
            port: 80,
            expect: (Disable, ""),
        },
        Case {
            name: "a policy targeting a Service that does not select the workload leaves it to the legacy default",
            documents: vec![
                httpbin_service("bar", "{}"),
                policy("bar", "sleep", "{targets: [{name: sleep}], peers: [{mtls: {}}]}"),
            ],
            port: 80,
            expect: (Disable, ""),
        },
        Case {
            name: "legacy policies of other namespaces do not apply, but make the set a 1.1-1.4 mesh: DISABLE",
            documents: vec![policy("foo", "default", MTLS)],
            port: 80,
            expect: (Disable, ""),
        },
    ]);
}

#[test]
fn the_istio_0_3_annotation_applies_when_no_v1alpha1_policy_does() {
    run(vec![
        Case {
            name: "NONE disables mTLS on the mapped workload port",
            documents: vec![httpbin_service("bar", "{auth.istio.io/8000: NONE}")],
            port: 80,
            expect: (Disable, "Service bar/httpbin service_annotation"),
        },
        Case {
            name: "MUTUAL_TLS is STRICT",
            documents: vec![httpbin_service("bar", "{auth.istio.io/8000: MUTUAL_TLS}")],
            port: 80,
            expect: (Strict, "Service bar/httpbin service_annotation"),
        },
        Case {
            name: "other ports of an annotated workload are uncovered",
            documents: vec![httpbin_service("bar", "{auth.istio.io/8000: MUTUAL_TLS}")],
            port: 9090,
            expect: (Disable, ""),
        },
        Case {
            name: "INHERIT has no opinion",
            documents: vec![httpbin_service("bar", "{auth.istio.io/8000: INHERIT}")],
            port: 80,
            expect: (Permissive, ""),
        },
        Case {
            name: "any applicable v1alpha1 policy beats the annotation",
            documents: vec![httpbin_service("bar", "{auth.istio.io/8000: NONE}"), mesh(MTLS)],
            port: 80,
            expect: (Strict, "MeshPolicy default legacy_mesh"),
        },
        Case {
            name: "a Service that does not select the workload has no say, beyond making the mesh legacy",
            documents: vec![service(
                "bar",
                "sleep",
                "{auth.istio.io/80: MUTUAL_TLS}",
                "{selector: {app: sleep}, ports: [{port: 80}]}",
            )],
            port: 80,
            expect: (Disable, ""),
        },
        Case {
            name: "a Service in another namespace has no say, beyond making the mesh legacy",
            documents: vec![httpbin_service("foo", "{auth.istio.io/8000: MUTUAL_TLS}")],
            port: 80,
            expect: (Disable, ""),
        },
        Case {
            name: "legacy documents elsewhere in a set with any PeerAuthentication leave the modern default",
            documents: vec![
                policy("foo", "default", MTLS),
                peer("foo", "default", "{mtls: {mode: STRICT}}"),
            ],
            port: 80,
            expect: (Permissive, ""),
        },
    ]);
}

#[test]
fn a_modern_policy_anywhere_for_the_workload_silences_legacy_ones() {
    run(vec![
        Case {
            name: "a modern mesh policy silences a legacy namespace policy",
            documents: vec![
                peer(ROOT, "default", "{mtls: {mode: PERMISSIVE}}"),
                policy("bar", "default", MTLS),
            ],
            port: 80,
            expect: (Permissive, "PeerAuthentication istio-system/default mesh"),
        },
        Case {
            name: "an UNSET modern policy still silences the legacy annotation",
            documents: vec![
                peer("bar", "default", "{}"),
                httpbin_service("bar", "{auth.istio.io/8000: NONE}"),
            ],
            port: 80,
            expect: (Permissive, ""),
        },
        Case {
            name: "a modern policy of another namespace does not",
            documents: vec![
                peer("foo", "default", "{mtls: {mode: PERMISSIVE}}"),
                policy("bar", "default", MTLS),
            ],
            port: 80,
            expect: (Strict, "Policy bar/default legacy_namespace"),
        },
    ]);
}

#[test]
fn legacy_known_ports_include_service_ports_and_annotations() {
    let set = policies(&[
        httpbin_service("bar", "{auth.istio.io/8000: NONE}"),
        policy(
            "bar",
            "httpbin",
            "{targets: [{name: httpbin, ports: [{number: 8000}]}]}",
        ),
    ]);
    let ports: Vec<u16> = set
        .known_ports(
            &workload("bar", &[("app", "httpbin")]),
            &crate::policy::ProtocolOverrides::default(),
        )
        .into_iter()
        .collect();
    assert_eq!(ports, [80]);
}
