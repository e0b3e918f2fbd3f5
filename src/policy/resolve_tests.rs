//! Modern resolution, in the terms of docs/policy.md#peerauthentication. The first table
//! mirrors the cases of Istio's `TestComposePeerAuthentication`.

use crate::policy::test_support::{peer, peer_annotated, peer_created, policies, run_cases, workload, Case, ROOT};
use crate::policy::MtlsMode::{Disable, Permissive, Strict};

const STRICT: &str = "{mtls: {mode: STRICT}}";
const PERMISSIVE: &str = "{mtls: {mode: PERMISSIVE}}";
const DISABLE: &str = "{mtls: {mode: DISABLE}}";
const UNSET: &str = "{mtls: {mode: UNSET}}";

fn finance(mode: &str) -> String {
    format!("{{selector: {{matchLabels: {{app: finance}}}}, mtls: {{mode: {mode}}}}}")
}

/// The tables' workload: finance in namespace foo.
fn run(cases: Vec<Case>) {
    run_cases(&workload("foo", &[("app", "finance"), ("version", "v1")]), cases);
}

#[test]
fn levels_compose_as_istio_composes_them() {
    run(vec![
        Case {
            name: "no policy at all is PERMISSIVE",
            documents: vec![],
            port: 8080,
            expect: (Permissive, ""),
        },
        Case {
            name: "a mesh policy alone sets the mode",
            documents: vec![peer(ROOT, "default", STRICT)],
            port: 8080,
            expect: (Strict, "PeerAuthentication istio-system/default mesh"),
        },
        Case {
            name: "namespace PERMISSIVE beats mesh STRICT",
            documents: vec![peer(ROOT, "default", STRICT), peer("foo", "default", PERMISSIVE)],
            port: 8080,
            expect: (Permissive, "PeerAuthentication foo/default namespace"),
        },
        Case {
            name: "a selector policy in the root namespace is ignored",
            documents: vec![peer(ROOT, "finance", &finance("STRICT"))],
            port: 8080,
            expect: (Permissive, ""),
        },
        Case {
            name: "workload STRICT beats namespace PERMISSIVE",
            documents: vec![
                peer("foo", "default", PERMISSIVE),
                peer("foo", "finance", &finance("STRICT")),
            ],
            port: 8080,
            expect: (Strict, "PeerAuthentication foo/finance workload"),
        },
        Case {
            name: "workload DISABLE beats mesh STRICT: narrower wins even when weaker",
            documents: vec![
                peer(ROOT, "default", STRICT),
                peer("foo", "finance", &finance("DISABLE")),
            ],
            port: 8080,
            expect: (Disable, "PeerAuthentication foo/finance workload"),
        },
        Case {
            name: "policies of other namespaces do not apply",
            documents: vec![peer("bar", "default", STRICT)],
            port: 8080,
            expect: (Permissive, ""),
        },
        Case {
            name: "a selector that does not match does not apply",
            documents: vec![peer(
                "foo",
                "other",
                "{selector: {matchLabels: {app: other}}, mtls: {mode: STRICT}}",
            )],
            port: 8080,
            expect: (Permissive, ""),
        },
        Case {
            name: "a selector needs all its labels on the workload",
            documents: vec![peer(
                "foo",
                "v2",
                "{selector: {matchLabels: {app: finance, version: v2}}, mtls: {mode: STRICT}}",
            )],
            port: 8080,
            expect: (Permissive, ""),
        },
        Case {
            name: "an UNSET mesh policy leaves PERMISSIVE",
            documents: vec![peer(ROOT, "default", UNSET)],
            port: 8080,
            expect: (Permissive, ""),
        },
        Case {
            name: "an UNSET workload policy inherits the mesh mode",
            documents: vec![peer(ROOT, "default", STRICT), peer("foo", "finance", &finance("UNSET"))],
            port: 8080,
            expect: (Strict, "PeerAuthentication istio-system/default mesh"),
        },
        Case {
            name: "a missing mtls block inherits the namespace mode",
            documents: vec![
                peer("foo", "default", DISABLE),
                peer("foo", "finance", "{selector: {matchLabels: {app: finance}}}"),
            ],
            port: 8080,
            expect: (Disable, "PeerAuthentication foo/default namespace"),
        },
        Case {
            name: "UNSET at namespace and workload inherits the mesh mode",
            documents: vec![
                peer(ROOT, "default", DISABLE),
                peer("foo", "default", UNSET),
                peer("foo", "finance", &finance("UNSET")),
            ],
            port: 8080,
            expect: (Disable, "PeerAuthentication istio-system/default mesh"),
        },
    ]);
}

#[test]
fn the_oldest_policy_at_a_level_wins_and_equal_times_fall_to_the_smaller_name() {
    let older = "2020-01-01T00:00:00Z";
    let newer = "2021-06-01T12:00:00+02:00";
    run(vec![
        Case {
            name: "oldest mesh policy wins",
            documents: vec![
                peer_created(ROOT, "a", newer, STRICT),
                peer_created(ROOT, "b", older, DISABLE),
            ],
            port: 80,
            expect: (Disable, "PeerAuthentication istio-system/b mesh"),
        },
        Case {
            name: "oldest namespace policy wins",
            documents: vec![
                peer_created("foo", "a", newer, STRICT),
                peer_created("foo", "b", older, DISABLE),
            ],
            port: 80,
            expect: (Disable, "PeerAuthentication foo/b namespace"),
        },
        Case {
            name: "oldest workload policy wins, and only it is used",
            documents: vec![
                peer_created(
                    "foo",
                    "a",
                    newer,
                    "{selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}, portLevelMtls: {80: {mode: DISABLE}}}",
                ),
                peer_created("foo", "b", older, &finance("PERMISSIVE")),
            ],
            port: 80,
            expect: (Permissive, "PeerAuthentication foo/b workload"),
        },
        Case {
            name: "equal timestamps fall to the smaller name",
            documents: vec![
                peer_created("foo", "zeta", older, STRICT),
                peer_created("foo", "alpha", older, DISABLE),
            ],
            port: 80,
            expect: (Disable, "PeerAuthentication foo/alpha namespace"),
        },
        Case {
            name: "an absent timestamp counts as oldest",
            documents: vec![peer_created("foo", "a", older, STRICT), peer("foo", "b", DISABLE)],
            port: 80,
            expect: (Disable, "PeerAuthentication foo/b namespace"),
        },
    ]);
}

#[test]
fn port_level_mtls_is_applied_last() {
    let port_policy = |workload_mode: &str, port_spec: &str| {
        peer(
            "foo",
            "finance",
            &format!(
                "{{selector: {{matchLabels: {{app: finance}}}}, mtls: {{mode: {workload_mode}}}, portLevelMtls: {{8080: {port_spec}}}}}"
            ),
        )
    };
    run(vec![
        Case {
            name: "a port entry overrides the workload mode on its port",
            documents: vec![port_policy("STRICT", "{mode: DISABLE}")],
            port: 8080,
            expect: (Disable, "PeerAuthentication foo/finance port"),
        },
        Case {
            name: "other ports keep the workload mode",
            documents: vec![port_policy("STRICT", "{mode: DISABLE}")],
            port: 9090,
            expect: (Strict, "PeerAuthentication foo/finance workload"),
        },
        Case {
            name: "a port-level UNSET keeps the workload's mode",
            documents: vec![port_policy("STRICT", "{mode: UNSET}")],
            port: 8080,
            expect: (Strict, "PeerAuthentication foo/finance workload"),
        },
        Case {
            name: "an empty port entry keeps the workload's resolved mode, inherited from the namespace",
            documents: vec![peer("foo", "default", DISABLE), port_policy("UNSET", "{}")],
            port: 8080,
            expect: (Disable, "PeerAuthentication foo/default namespace"),
        },
        Case {
            name: "a port entry under an UNSET workload mode still applies",
            documents: vec![
                peer(ROOT, "default", STRICT),
                port_policy("UNSET", "{mode: PERMISSIVE}"),
            ],
            port: 8080,
            expect: (Permissive, "PeerAuthentication foo/finance port"),
        },
    ]);
}

#[test]
fn the_http_alpn_annotation_comes_from_the_workload_then_the_namespace_and_needs_permissive() {
    let on = "{http-alpns.aspenmesh.io: 'true'}";
    let off = "{http-alpns.aspenmesh.io: 'false'}";
    let finance_workload = workload("foo", &[("app", "finance")]);
    let http_alpn = |documents: Vec<String>, port: u16| policies(&documents).resolve(&finance_workload, port).http_alpn;

    assert!(
        http_alpn(vec![peer_annotated("foo", "default", on, PERMISSIVE)], 80),
        "namespace on"
    );
    assert!(
        !http_alpn(
            vec![
                peer_annotated("foo", "default", on, PERMISSIVE),
                peer_annotated("foo", "finance", off, &finance("PERMISSIVE")),
            ],
            80
        ),
        "the workload's false overrides the namespace's true"
    );
    assert!(
        http_alpn(
            vec![
                peer_annotated("foo", "default", on, PERMISSIVE),
                peer("foo", "finance", &finance("UNSET")),
            ],
            80
        ),
        "a workload policy without the annotation keeps the namespace's, and UNSET inherits PERMISSIVE"
    );
    assert!(
        !http_alpn(vec![peer_annotated("foo", "default", on, STRICT)], 80),
        "no effect on STRICT ports"
    );
    assert!(
        !http_alpn(
            vec![peer_annotated(
                "foo",
                "finance",
                on,
                "{selector: {matchLabels: {app: finance}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {8080: {mode: DISABLE}}}"
            )],
            8080
        ),
        "no effect on a DISABLE port of a PERMISSIVE workload"
    );
    assert!(
        !http_alpn(vec![peer_annotated(ROOT, "default", on, PERMISSIVE)], 80),
        "ignored in the root namespace"
    );
    assert!(
        http_alpn(vec![peer_annotated("foo", "default", on, "{}")], 80),
        "PERMISSIVE reached by default counts"
    );
}

#[test]
fn the_root_namespace_annotation_is_a_warning_for_the_workload() {
    let set = policies(&[peer_annotated(
        ROOT,
        "default",
        "{http-alpns.aspenmesh.io: 'true'}",
        PERMISSIVE,
    )]);
    let warnings = set.warnings_for(&workload("foo", &[]));
    assert_eq!(
        warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["test.yaml: document 0 (PeerAuthentication istio-system/default): \
          metadata.annotations[\"http-alpns.aspenmesh.io\"]: the HTTP ALPN annotation is not supported in \
          the root namespace istio-system; ignored"]
    );
}

#[test]
fn known_ports_are_the_winning_workload_policys_port_entries() {
    let set = policies(&[peer(
        "foo",
        "finance",
        "{selector: {matchLabels: {app: finance}}, portLevelMtls: {8080: {mode: DISABLE}, 9090: {}}}",
    )]);
    let ports: Vec<u16> = set
        .known_ports(
            &workload("foo", &[("app", "finance")]),
            &crate::policy::ProtocolOverrides::default(),
        )
        .into_iter()
        .collect();
    assert_eq!(ports, [8080, 9090]);
}
