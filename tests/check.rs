//! `peerguard check` as an operator runs it: the real binary on the seeds' policies, from
//! files and from a (test) Kubernetes API server holding the same documents.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};
use support::cli::{peerguard, policy, stdout};
use support::kube_api::{KubeApi, ALL_GROUP_VERSIONS};

fn check(args: &[&str]) -> Output {
    peerguard("check", args)
}

fn json_rows(args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
    let answer: Value = serde_json::from_str(&stdout(&check(&args))).expect("stdout is JSON");
    answer["ports"].clone()
}

#[test]
fn finance_is_strict_except_on_its_port_8080() {
    let finance = policy("finance.yaml");
    let text = stdout(&check(&[
        "--policy",
        &finance,
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
    ]));
    assert_eq!(
        text,
        format!(
            "workload:   namespace foo, labels app=finance, root namespace istio-system\n\
             policy:     {finance}\n\
             \n\
             port 8080: DISABLE\n  \
               set by:     PeerAuthentication foo/finance (port: portLevelMtls entry for this port)\n  \
               http alpn:  off (it acts on PERMISSIVE ports only)\n  \
               protocol:   unknown: no Service or --app-protocol declares it\n\
             \n\
             all other ports: STRICT\n  \
               set by:     PeerAuthentication foo/finance (workload: policy selecting this workload)\n  \
               http alpn:  off (it acts on PERMISSIVE ports only)\n  \
               protocol:   unknown: no Service or --app-protocol declares it\n"
        )
    );
}

#[test]
fn finance_as_json_lists_each_port_then_all_other_ports() {
    let rows = json_rows(&[
        "--policy",
        &policy("finance.yaml"),
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
    ]);
    assert_eq!(
        rows,
        json!([
            {"port": 8080, "mode": "DISABLE", "http_alpn": false, "action": null, "reason": null,
             "protocol": {"protocol": "unknown", "source": null}, "negotiated_alpn": null,
             "source": {"kind": "PeerAuthentication", "namespace": "foo", "name": "finance", "level": "port"}},
            {"port": null, "mode": "STRICT", "http_alpn": false, "action": null, "reason": null,
             "protocol": {"protocol": "unknown", "source": null}, "negotiated_alpn": null,
             "source": {"kind": "PeerAuthentication", "namespace": "foo", "name": "finance", "level": "workload"}},
        ])
    );
}

#[test]
fn a_workload_the_finance_policy_does_not_select_gets_the_namespace_mode() {
    let rows = json_rows(&[
        "--policy",
        &policy("finance.yaml"),
        "--namespace",
        "foo",
        "--labels",
        "app=ledger",
    ]);
    assert_eq!(rows[0]["port"], Value::Null);
    assert_eq!(rows[0]["mode"], "PERMISSIVE");
    assert_eq!(rows[0]["source"]["level"], "namespace");
}

#[test]
fn an_unset_workload_mode_inherits_the_namespace_strict() {
    let rows = json_rows(&[
        "--policy",
        &policy("finance-inherit.yaml"),
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
        "--port",
        "9090",
        "--plaintext",
    ]);
    assert_eq!(
        rows,
        json!([{"port": 9090, "mode": "STRICT", "http_alpn": false, "action": "refuse", "reason": "plaintext_on_strict",
                "protocol": {"protocol": "unknown", "source": null}, "negotiated_alpn": null,
                "source": {"kind": "PeerAuthentication", "namespace": "foo", "name": "default", "level": "namespace"}}])
    );
}

#[test]
fn a_described_connection_gets_the_proxys_action_and_reason_in_words() {
    let text = stdout(&check(&[
        "--policy",
        &policy("finance.yaml"),
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
        "--port",
        "9090",
        "--plaintext",
    ]));
    assert!(text.contains("connection: plaintext\n"), "{text}");
    assert!(
        text.contains("  action:     refuse (plaintext_on_strict): STRICT: plaintext is refused with a TCP close"),
        "{text}"
    );
}

#[test]
fn the_http_alpn_annotation_makes_h2_a_mesh_alpn_on_permissive_ports() {
    let args = [
        "--policy",
        &policy("http-alpn.yaml"),
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
        "--tls",
        "--alpn",
        "h2,http/1.1",
    ];
    let rows = json_rows(&args);
    assert_eq!(rows[0]["http_alpn"], true);
    assert_eq!(rows[0]["action"], "terminate");
    assert_eq!(rows[0]["reason"], "mtls");
    assert_eq!(rows[0]["source"]["level"], "workload");

    // Nothing declares the port's protocol: http/1.1 goes before h2.
    assert_eq!(rows[0]["negotiated_alpn"], "http/1.1");

    let text = stdout(&check(&args));
    assert!(text.contains("connection: TLS, ALPN offered: h2, http/1.1\n"), "{text}");
    assert!(
        text.contains("  alpn:       http/1.1 (the app's protocol is unknown: http/1.1, then http/1.0, go before h2"),
        "{text}"
    );
    assert!(
        text.contains("  http alpn:  on: http/1.0, http/1.1 and h2 also mark mesh peers\n"),
        "{text}"
    );
}

#[test]
fn istio_1_1_httpbin_in_foo_is_plaintext_by_its_service_policy() {
    let dir = policy("istio-1.1-task");
    let text = stdout(&check(&[
        "--policy",
        &dir,
        "--namespace",
        "foo",
        "--labels",
        "app=httpbin,version=v1",
    ]));
    assert!(
        text.contains(
            "port 80: DISABLE\n  set by:     Policy foo/overwrite-example (legacy_service: legacy policy targeting a \
             Service of this workload)\n"
        ),
        "{text}"
    );
    let rows = json_rows(&[
        "--policy",
        &dir,
        "--namespace",
        "foo",
        "--labels",
        "app=httpbin,version=v1",
    ]);
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    for row in rows.as_array().into_iter().flatten() {
        assert_eq!(row["mode"], "DISABLE");
        assert_eq!(row["source"]["name"], "overwrite-example");
    }
}

#[test]
fn istio_1_1_httpbin_in_bar_accepts_plaintext_on_ports_its_port_1234_policy_does_not_cover() {
    let rows = json_rows(&[
        "--policy",
        &policy("istio-1.1-task"),
        "--namespace",
        "bar",
        "--labels",
        "app=httpbin,version=v1",
        "--plaintext",
    ]);
    assert_eq!(
        rows[0],
        json!({"port": 80, "mode": "DISABLE", "http_alpn": false, "action": "passthrough", "reason": "passthrough_disabled",
               "protocol": {"protocol": "http1", "source": "Service bar/httpbin port 8000 (name http)"},
               "negotiated_alpn": null,
               "source": null})
    );
}

#[test]
fn the_istio_0_3_annotation_disables_mtls_on_the_mapped_container_port() {
    let rows = json_rows(&[
        "--policy",
        &policy("istio-0.3-annotation.yaml"),
        "--namespace",
        "default",
        "--labels",
        "app=httpbin",
    ]);
    assert_eq!(rows[0]["port"], 80);
    assert_eq!(rows[0]["mode"], "DISABLE");
    assert_eq!(rows[0]["source"]["level"], "service_annotation");
    assert_eq!(rows[1]["mode"], "DISABLE");
    assert_eq!(rows[1]["source"], json!(null));
}

#[test]
fn no_policy_means_every_port_permissive() {
    let rows = json_rows(&["--namespace", "foo", "--labels", "app=x"]);
    assert_eq!(
        rows,
        json!([{"port": null, "mode": "PERMISSIVE", "source": null, "http_alpn": false, "action": null, "reason": null,
                "protocol": {"protocol": "unknown", "source": null}, "negotiated_alpn": null,}])
    );
}

#[test]
fn an_invalid_policy_exits_2_with_the_error_on_stderr() {
    let file = policy("invalid/lowercase-mode.yaml");
    let output = check(&["--policy", &file, "--namespace", "foo", "--labels", "app=finance"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "error: {file}: document 1 (PeerAuthentication foo/finance): spec.portLevelMtls.8080.mode: \
             \"strict\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT\n"
        )
    );
}

#[test]
fn a_bad_label_exits_2() {
    let output = check(&["--namespace", "foo", "--labels", "app"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: --labels: \"app\" is not key=value\n"
    );
}

#[test]
fn run_refuses_a_bad_label_with_the_same_exit_code_and_words_as_check() {
    let output = peerguard(
        "run",
        &["--namespace", "foo", "--labels", "app", "--cert-dir", "/nonexistent"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "peerguard: --labels: \"app\" is not key=value\n"
    );
}

#[test]
fn warnings_go_to_stderr_and_the_policy_is_used() {
    let file = policy("warnings.yaml");
    let output = check(&["--policy", &file, "--namespace", "foo", "--output", "json"]);
    let answer: Value = serde_json::from_str(&stdout(&output)).expect("stdout is JSON");
    assert_eq!(answer["workload"]["namespace"], "foo", "the workload the answer is for");
    let rows = &answer["ports"];
    assert_eq!(rows[0]["mode"], "STRICT");
    assert_eq!(rows[0]["source"]["name"], "everyone");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "warning: {file}: document 1 (PeerAuthentication foo/everyone): spec.selector: the selector is empty, \
             so the policy applies to the whole namespace\n\
             warning: {file}: document 0 (PeerAuthentication istio-system/default): \
             metadata.annotations[\"http-alpns.aspenmesh.io\"]: the HTTP ALPN annotation is not supported in the \
             root namespace istio-system; ignored\n"
        )
    );
}

/// `app-protocols.yaml`: workload `app=web` in `foo` is STRICT; its Service declares port 8080
/// HTTP/1.1 by name, 9090 gRPC by appProtocol and 5432 TCP by name.
fn web_rows(extra: &[&str]) -> Value {
    let file = policy("app-protocols.yaml");
    let mut args = vec!["--policy", &file, "--namespace", "foo", "--labels", "app=web"];
    args.extend(extra);
    json_rows(&args)
}

#[test]
fn each_port_shows_its_protocol_and_what_declared_it() {
    let rows = web_rows(&[]);
    let protocols: Vec<(Value, Value, Value)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row["port"].clone(),
                row["protocol"]["protocol"].clone(),
                row["protocol"]["source"].clone(),
            )
        })
        .collect();
    assert_eq!(
        protocols,
        [
            (
                json!(5432),
                json!("tcp"),
                json!("Service foo/web port 5432 (name tcp-postgres)")
            ),
            (
                json!(8080),
                json!("http1"),
                json!("Service foo/web port 80 (name http-web)")
            ),
            (
                json!(9090),
                json!("http2"),
                json!("Service foo/web port 9090 (appProtocol grpc)")
            ),
            (json!(null), json!("unknown"), json!(null)),
        ]
    );
}

#[test]
fn a_terminated_client_offering_h2_and_http11_gets_what_each_port_speaks() {
    let rows = web_rows(&["--tls", "--alpn", "h2,http/1.1"]);
    let negotiated: Vec<(Value, Value)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| (row["port"].clone(), row["negotiated_alpn"].clone()))
        .collect();
    assert_eq!(
        negotiated,
        [
            (json!(5432), json!(null)),
            (json!(8080), json!("http/1.1")),
            (json!(9090), json!("h2")),
            (json!(null), json!("http/1.1")),
        ]
    );
    let only_h2 = web_rows(&["--port", "8080", "--tls", "--alpn", "h2"]);
    assert_eq!(only_h2[0]["action"], "terminate");
    assert_eq!(
        only_h2[0]["negotiated_alpn"],
        Value::Null,
        "an HTTP/1.1 app never gets h2"
    );
}

#[test]
fn the_app_protocol_flag_beats_the_service_and_names_new_ports() {
    let rows = web_rows(&["--app-protocol", "9090=http1", "--app-protocol", "7000=http2"]);
    assert_eq!(rows[0]["port"], 5432);
    assert_eq!(rows[1]["port"], 7000);
    assert_eq!(
        rows[1]["protocol"],
        json!({"protocol": "http2", "source": "--app-protocol 7000=http2"})
    );
    assert_eq!(rows[1]["mode"], "STRICT");
    assert_eq!(
        rows[3]["protocol"],
        json!({"protocol": "http1", "source": "--app-protocol 9090=http1"})
    );

    let text = stdout(&check(&[
        "--policy",
        &policy("app-protocols.yaml"),
        "--namespace",
        "foo",
        "--labels",
        "app=web",
        "--port",
        "9090",
        "--app-protocol",
        "9090=tcp",
        "--tls",
        "--alpn",
        "istio,h2",
    ]));
    assert!(
        text.contains("  protocol:   tcp: declared by --app-protocol 9090=tcp\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "  alpn:       none (the app's protocol is not HTTP, so no ALPN is selected; the handshake goes on)\n"
        ),
        "{text}"
    );
}

#[test]
fn a_bad_app_protocol_flag_exits_2_with_what_is_expected() {
    let output = check(&["--namespace", "foo", "--app-protocol", "8080=grpc"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`grpc` is not an app protocol: use http1, http2 or tcp"),
        "{stderr}"
    );
    let output = check(&[
        "--namespace",
        "foo",
        "--app-protocol",
        "8080=http1",
        "--app-protocol",
        "8080=http2",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: --app-protocol names port 8080 twice, as http1 and as http2\n"
    );
}

/// Runs check on an invalid policy file and returns its stderr, after checking the exit code.
fn refused(file: &str) -> String {
    let output = check(&["--policy", file, "--namespace", "foo", "--labels", "app=finance"]);
    assert_eq!(output.status.code(), Some(2), "{file}");
    assert!(output.stdout.is_empty());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_typo_in_a_policy_exits_2_naming_the_field_and_the_nearest_known_name() {
    let cases = [
        (
            "invalid/mode-typo.yaml",
            "(PeerAuthentication foo/default): spec.mtls.mdoe: unknown field; did you mean `mode`?",
        ),
        (
            "invalid/selector-typo.yaml",
            "(PeerAuthentication foo/finance): spec.selectr: unknown field; did you mean `selector`?",
        ),
        (
            "invalid/port-level-typo.yaml",
            "(PeerAuthentication foo/finance): spec.portLevelMTLS: unknown field; did you mean `portLevelMtls`?",
        ),
        (
            "invalid/no-namespace.yaml",
            "(PeerAuthentication): metadata.namespace: is required: a namespaced kind must say where it applies",
        ),
    ];
    for (name, message) in cases {
        let file = policy(name);
        assert_eq!(refused(&file), format!("error: {file}: document 0 {message}\n"));
    }
}

#[test]
fn an_invalid_policy_is_reported_as_json_with_the_workload_when_json_is_asked_for() {
    let file = policy("invalid/mode-typo.yaml");
    let output = check(&[
        "--policy",
        &file,
        "--namespace",
        "foo",
        "--labels",
        "app=finance",
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(
        report,
        json!({
            "error": {
                "message": format!("{file}: document 0 (PeerAuthentication foo/default): spec.mtls.mdoe: unknown \
                                    field; did you mean `mode`?"),
                "file": file, "document": 0, "item": null, "object": "PeerAuthentication foo/default",
                "path": "spec.mtls.mdoe",
            },
            "workload": {"namespace": "foo", "labels": {"app": "finance"}, "root_namespace": "istio-system"},
        })
    );
}

fn authorization_of(extra: &[&str]) -> Value {
    let file = policy("authorization.yaml");
    let args: Vec<&str> = ["--policy", &file, "--namespace", "foo", "--labels", "app=web"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let rows = json_rows(&args);
    rows[0]["authorization"].clone()
}

#[test]
fn check_says_which_policy_and_rule_let_a_mesh_peer_in_and_what_dry_run_would_do() {
    assert_eq!(
        authorization_of(&[
            "--port",
            "8080",
            "--principal",
            "spiffe://cluster.local/ns/foo/sa/sleep"
        ]),
        json!({"verdict": "allow", "policy": "foo/web", "rule": 0, "reason": "allowed_by_policy",
               "dry_run": [{"policy": "foo/try-deny-sleep", "rule": 0, "verdict": "deny"}]})
    );
}

#[test]
fn check_denies_a_peer_no_allow_rule_admits_with_no_deciding_policy() {
    assert_eq!(
        authorization_of(&["--port", "9090", "--principal", "spiffe://cluster.local/ns/foo/sa/web"]),
        json!({"verdict": "deny", "policy": null, "rule": null, "reason": "no_allow_matched",
               "dry_run": [{"policy": null, "rule": null, "verdict": "allow"}]})
    );
}

#[test]
fn check_names_a_root_namespace_deny() {
    assert_eq!(
        authorization_of(&[
            "--port",
            "8080",
            "--principal",
            "spiffe://cluster.local/ns/legacy/sa/app"
        ])["policy"],
        "istio-system/deny-legacy"
    );
}

#[test]
fn check_admits_plaintext_from_an_allowed_block_by_its_source_ip() {
    let admitted = authorization_of(&["--port", "9090", "--plaintext", "--source-ip", "10.1.2.3"]);
    assert_eq!(
        (admitted["verdict"].clone(), admitted["rule"].clone()),
        (json!("allow"), json!(1))
    );
    let refused = authorization_of(&["--port", "9090", "--plaintext", "--source-ip", "192.0.2.1"]);
    assert_eq!(refused["verdict"], "deny");
}

#[test]
fn check_explains_authorization_in_text() {
    let file = policy("authorization.yaml");
    let text = stdout(&check(&[
        "--policy",
        &file,
        "--namespace",
        "foo",
        "--labels",
        "app=web",
        "--port",
        "8080",
        "--principal",
        "spiffe://cluster.local/ns/foo/sa/sleep",
        "--sni",
        "web.foo.svc.cluster.local",
    ]));
    assert_eq!(
        text,
        format!(
            "workload:   namespace foo, labels app=web, root namespace istio-system\n\
             policy:     {file}\n\
             peer:       mTLS, spiffe://cluster.local/ns/foo/sa/sleep, sni web.foo.svc.cluster.local\n\
             \n\
             port 8080: PERMISSIVE\n  \
               set by:     no policy (PERMISSIVE is the default)\n  \
               http alpn:  off\n  \
               protocol:   unknown: no Service or --app-protocol declares it\n  \
               authorized: allow (allowed_by_policy): AuthorizationPolicy foo/web rule 0\n  \
               dry run:    would deny (AuthorizationPolicy foo/try-deny-sleep rule 0), not enforced\n"
        )
    );
}

#[test]
fn an_invalid_authorization_policy_exits_2_naming_the_field() {
    let file = policy("invalid/authorization-bad-cidr.yaml");
    assert_eq!(
        refused(&file),
        format!(
            "error: {file}: document 0 (AuthorizationPolicy foo/web): spec.rules[0].from[0].source.ipBlocks[0]: \
             \"10.0.0.0/40\" is not an IP address or CIDR block: prefix length out of range\n"
        )
    );
}

/// Every file of a policy directory (or the one file) as one YAML text.
fn documents(path: &Path) -> String {
    let files: Vec<_> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_kubeconfig_answers_from_the_live_cluster_as_from_the_same_files() {
    // The seeds' policies: modern levels and port-level modes, the HTTP ALPN annotation,
    // Services and their protocols, AuthorizationPolicies, the legacy kinds of Istio 1.1, and
    // the Istio 0.3 Service annotation.
    let cases: &[(&str, &[&str])] = &[
        (
            "finance.yaml",
            &["--namespace", "foo", "--labels", "app=finance", "--plaintext"],
        ),
        (
            "finance.yaml",
            &[
                "--namespace",
                "foo",
                "--labels",
                "app=other",
                "--tls",
                "--alpn",
                "istio",
            ],
        ),
        (
            "http-alpn.yaml",
            &["--namespace", "foo", "--labels", "app=web", "--tls", "--alpn", "h2"],
        ),
        ("app-protocols.yaml", &["--namespace", "foo", "--labels", "app=web"]),
        (
            "authorization.yaml",
            &[
                "--namespace",
                "foo",
                "--labels",
                "app=payments",
                "--principal",
                "spiffe://cluster.local/ns/foo/sa/web",
            ],
        ),
        (
            "istio-1.1-task",
            &[
                "--namespace",
                "foo",
                "--labels",
                "app=httpbin,version=v1",
                "--plaintext",
            ],
        ),
        (
            "istio-1.1-task",
            &[
                "--namespace",
                "bar",
                "--labels",
                "app=httpbin,version=v1",
                "--plaintext",
            ],
        ),
        (
            "istio-0.3-annotation.yaml",
            &["--namespace", "default", "--labels", "app=httpbin"],
        ),
    ];
    for (seed, workload) in cases {
        let path = std::path::PathBuf::from(policy(seed));
        let api = KubeApi::start(ALL_GROUP_VERSIONS).await;
        api.apply_yaml(&documents(&path));
        let kubeconfig = api.kubeconfig().display().to_string();
        let (file_args, cluster_args) = (path.display().to_string(), kubeconfig.clone());
        let described: Vec<&str> = workload.to_vec();
        let (from_file, from_cluster) = tokio::task::spawn_blocking(move || {
            let with = |source: [&str; 2]| json_rows(&[&source[..], &described].concat());
            (with(["--policy", &file_args]), with(["--kubeconfig", &cluster_args]))
        })
        .await
        .unwrap();
        assert_eq!(from_cluster, from_file, "{seed} {workload:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_kubeconfig_names_the_permission_a_403_lacks_and_exits_2() {
    let api = KubeApi::start(ALL_GROUP_VERSIONS).await;
    api.forbid("list", "services", "istio-system");
    let kubeconfig = api.kubeconfig().display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        check(&["--kubeconfig", &kubeconfig, "--namespace", "foo", "--labels", "app=web"])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "list services in namespace istio-system: 403 Forbidden: the service account may not list services in \
             namespace istio-system (a Role there)"
        ),
        "{stderr}"
    );
}
