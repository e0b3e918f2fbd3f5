//! `peerguard tls-check` as an operator runs it: the real binary on the seeds' policies and
//! DestinationRules.

mod support;

use serde_json::{json, Value};
use support::cli::{peerguard, policy, stdout};

fn tls_check(args: &[&str]) -> String {
    stdout(&peerguard("tls-check", args))
}

fn json(command: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
    serde_json::from_str(&stdout(&peerguard(command, &args))).expect("stdout is JSON")
}

#[test]
fn the_field_guides_strict_mesh_without_a_destination_rule_is_a_conflict_without_auto_mtls() {
    let file = policy("tls-check/field-guide.yaml");
    let args = ["--policy", &file, "--client-namespace", "default"];
    assert_eq!(
        tls_check(&[&args[..], &["--auto-mtls", "false"]].concat()),
        "HOST:PORT                          STATUS       SERVER     CLIENT     AUTHN POLICY     DESTINATION RULE\n\
         foo.bar.svc.cluster.local:8000     CONFLICT     STRICT     -          /default         -\n"
    );
    assert_eq!(
        tls_check(&args),
        "HOST:PORT                          STATUS     SERVER     CLIENT     AUTHN POLICY     DESTINATION RULE\n\
         foo.bar.svc.cluster.local:8000     AUTO       STRICT     -          /default         -\n",
        "auto mTLS is on unless turned off"
    );
}

#[test]
fn the_istio_1_1_global_mtls_task_is_ok_except_where_a_rule_disables_tls_to_a_strict_server() {
    let dir = policy("tls-check/istio-1.1-mesh");
    let rows = json(
        "tls-check",
        &["--policy", &dir, "--client-namespace", "foo", "--auto-mtls", "false"],
    );
    let summary: Vec<(String, String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let cell = |key: &str| row[key].as_str().unwrap().to_string();
            (
                format!("{}:{}", cell("host"), row["port"]),
                cell("status"),
                cell("destination_rule"),
            )
        })
        .collect();
    let expect = [
        ("httpbin.bar.svc.cluster.local:8000", "OK", "istio-system/default"),
        ("httpbin.foo.svc.cluster.local:8000", "OK", "istio-system/default"),
        (
            "httpbin.legacy.svc.cluster.local:8000",
            "CONFLICT",
            "legacy/httpbin-legacy",
        ),
        ("sleep.bar.svc.cluster.local:80", "OK", "istio-system/default"),
        ("sleep.foo.svc.cluster.local:80", "OK", "istio-system/default"),
        ("sleep.legacy.svc.cluster.local:80", "OK", "istio-system/default"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(summary, expect);
    assert_eq!(
        rows[2],
        json!({"host": "httpbin.legacy.svc.cluster.local", "port": 8000, "status": "CONFLICT", "server": "STRICT",
               "client": "DISABLE", "authn_policy": "/default", "destination_rule": "legacy/httpbin-legacy"})
    );
}

#[test]
fn the_istio_1_1_namespace_task_leaves_namespaces_without_policy_on_plaintext_and_names_no_policy() {
    let dir = policy("tls-check/istio-1.1-namespace");
    let rows = json(
        "tls-check",
        &[
            "--policy",
            &dir,
            "--client-namespace",
            "bar",
            "--auto-mtls",
            "false",
            "httpbin.bar.svc.cluster.local:8000",
        ],
    );
    assert_eq!(
        rows,
        json!([{"host": "httpbin.bar.svc.cluster.local", "port": 8000, "status": "OK", "server": "DISABLE",
                "client": "-", "authn_policy": "-", "destination_rule": "-"}])
    );
    let rows = json(
        "tls-check",
        &[
            "--policy",
            &dir,
            "--client-namespace",
            "legacy",
            "httpbin.foo.svc.cluster.local",
        ],
    );
    assert_eq!(
        rows,
        json!([{"host": "httpbin.foo.svc.cluster.local", "port": 8000, "status": "OK", "server": "STRICT",
                "client": "ISTIO_MUTUAL", "authn_policy": "foo/default", "destination_rule": "foo/default"}])
    );
}

#[test]
fn explain_says_which_pool_host_and_policy_decided() {
    let dir = policy("tls-check/istio-1.1-mesh");
    let rows = json(
        "tls-check",
        &[
            "--policy",
            &dir,
            "--client-namespace",
            "foo",
            "--explain",
            "httpbin.legacy.svc.cluster.local:8000",
        ],
    );
    assert_eq!(
        rows[0]["explain"],
        json!({
            "server": "STRICT on workload port 80 (the Service port's targetPort): set by MeshPolicy default (legacy_mesh)",
            "client": "DestinationRule legacy/httpbin-legacy found in the rules the Service's namespace exports for host \
                       httpbin.legacy.svc.cluster.local; the top-level tls: DISABLE"
        })
    );
}

/// `check` for the Service's workload (its selector as labels) on the targetPort must name the
/// same mode and policy as `tls-check`'s server side: they resolve through the same engine.
#[test]
fn check_and_tls_check_agree_on_the_server_side() {
    for dir in [
        "istio-1.1-task",
        "tls-check/istio-1.1-mesh",
        "tls-check/istio-1.1-namespace",
    ] {
        let dir = policy(dir);
        let rows = json("tls-check", &["--policy", &dir, "--client-namespace", "foo"]);
        for row in rows.as_array().unwrap() {
            let host = row["host"].as_str().unwrap();
            let mut labels = host.split('.');
            let (name, namespace) = (labels.next().unwrap(), labels.next().unwrap());
            // httpbin's 8000 and sleep's 80 both reach container port 80.
            let port = "80";
            let checked = json(
                "check",
                &[
                    "--policy",
                    &dir,
                    "--namespace",
                    namespace,
                    "--labels",
                    &format!("app={name}"),
                    "--port",
                    port,
                ],
            );
            let checked = &checked["ports"];
            let source = &checked[0]["source"];
            let named = if source.is_null() {
                "-".to_string()
            } else {
                format!(
                    "{}/{}",
                    source["namespace"].as_str().unwrap(),
                    source["name"].as_str().unwrap()
                )
            };
            assert_eq!(
                (&checked[0]["mode"], named.as_str()),
                (&row["server"], row["authn_policy"].as_str().unwrap()),
                "{dir} {host}"
            );
        }
    }
}

#[test]
fn an_invalid_destination_rule_exits_2_naming_file_document_and_field() {
    let dir = std::env::temp_dir().join(format!("peerguard-tls-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dr.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: foo}\n\
         spec: {host: '*.local', trafficPolicy: {tls: {mode: ISTIO_MUTAUL}}}\n",
    )
    .unwrap();
    let output = peerguard(
        "tls-check",
        &["--policy", file.to_str().unwrap(), "--client-namespace", "foo"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "error: {}: document 0 (DestinationRule foo/r): spec.trafficPolicy.tls.mode: \"ISTIO_MUTAUL\" is not \
             one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL\n",
            file.display()
        )
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_host_no_service_has_exits_2() {
    let file = policy("tls-check/field-guide.yaml");
    let output = peerguard(
        "tls-check",
        &["--policy", &file, "--client-namespace", "default", "foo.bar:8000"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no Service in the policy set has foo.bar:8000"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
