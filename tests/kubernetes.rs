//! The Kubernetes API as the policy source (`--policy-source kubernetes`): the real `kube`
//! client in peerguard against the test API server of `support::kube_api` (no real API server
//! can run here; tests/README.md says what the test server speaks and how to run these
//! scenarios against a real cluster). What the proxy did is checked on live connections, in
//! `/config_dump`, in the metrics and in what the server was asked.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::admin::{eventually, get, metric_reaches, sample};
use support::app::TestApp;
use support::clients::{client_config, plaintext_exchange, tls_exchange};
use support::kube_api::{KubeApi, ALL_GROUP_VERSIONS};
use support::pki::{Pki, TestDir};
use support::proxy::{
    start_proxy, start_proxy_from, start_proxy_on_cluster, start_proxy_on_cluster_unready, PolicyFrom, Proxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/policies");

/// A PeerAuthentication in `namespace`; with `app`, selecting the workload `app=<app>`.
fn peer_authentication(namespace: &str, name: &str, mode: &str, app: Option<&str>) -> Value {
    let mut policy = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"mtls": {"mode": mode}},
    });
    if let Some(app) = app {
        policy["spec"]["selector"] = json!({"matchLabels": {"app": app}});
    }
    policy
}

async fn config_dump(proxy: &Proxy) -> Value {
    let body = get(proxy.running.admin, "/config_dump")
        .await
        .expect("config_dump")
        .body;
    serde_json::from_str(&body).expect("config_dump is JSON")
}

/// Waits until the policy in force is generation `generation`, and returns the dump showing it.
async fn generation(proxy: &Proxy, generation: u64) -> Value {
    eventually(&format!("policy generation {generation}"), || async {
        let dump = config_dump(proxy).await;
        (dump["policy"]["generation"] == generation).then_some(dump)
    })
    .await
}

/// The mode new connections to the app's port get.
fn app_port_mode(dump: &Value) -> String {
    let port = &dump["policy"]["ports"][0];
    port["mode"].as_str().expect("a mode").to_string()
}

/// Whether a new plaintext connection is passed through to the app (its echo comes back).
async fn plaintext_passes(proxy: &Proxy) -> bool {
    plaintext_exchange(proxy.addr, b"hello")
        .await
        .is_ok_and(|reply| reply == b"hello")
}

/// Sends `payload` on an open connection and reads the echo; false if the connection is gone.
async fn echoes(stream: &mut TcpStream, payload: &[u8]) -> bool {
    if stream.write_all(payload).await.is_err() {
        return false;
    }
    let mut reply = vec![0; payload.len()];
    matches!(
        tokio::time::timeout(support::admin::DEADLINE, stream.read_exact(&mut reply)).await,
        Ok(Ok(_))
    ) && reply == payload
}

/// The source's entry for one resource in `/config_dump`.
fn resource<'a>(dump: &'a Value, resource: &str, namespace: Option<&str>) -> &'a Value {
    dump["policy"]["source"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["resource"] == resource && r["namespace"].as_str() == namespace)
        .unwrap_or_else(|| panic!("{resource} in {namespace:?} in {dump:#}"))
}

/// A test API server holding `objects`, an app, and peerguard in front of it reading its
/// policy from that server, ready.
struct OnCluster {
    pki: Pki,
    api: KubeApi,
    proxy: Proxy,
    _app: TestApp,
}

impl OnCluster {
    async fn start(group_versions: &[&str], objects: Vec<Value>) -> OnCluster {
        let (pki, app) = (Pki::new(), TestApp::start().await);
        let api = KubeApi::start(group_versions).await;
        for object in objects {
            api.apply(object);
        }
        let proxy = start_proxy_on_cluster(&pki, &api, app.addr, &[]).await;
        generation(&proxy, 1).await;
        OnCluster {
            pki,
            api,
            proxy,
            _app: app,
        }
    }

    /// Waits until the watch of the workload namespace's PeerAuthentications has started
    /// `count` times.
    async fn watches(&self, count: usize) {
        eventually(&format!("{count} watches"), || async {
            (self.api.count("watch", "peerauthentications", "default") == count).then_some(())
        })
        .await
    }
}

async fn scrape(proxy: &Proxy) -> String {
    get(proxy.running.admin, "/stats/prometheus")
        .await
        .expect("scrape")
        .body
}

#[tokio::test]
async fn added_modified_and_deleted_peer_authentications_change_the_next_connection() {
    let OnCluster { pki, api, proxy, .. } = OnCluster::start(
        ALL_GROUP_VERSIONS,
        vec![peer_authentication("default", "default", "PERMISSIVE", None)],
    )
    .await;
    assert_eq!(app_port_mode(&config_dump(&proxy).await), "PERMISSIVE");
    assert!(plaintext_passes(&proxy).await);
    let mut open = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(echoes(&mut open, b"opened while PERMISSIVE").await);

    // Modified: the namespace turns STRICT.
    let rv = api.apply(peer_authentication("default", "default", "STRICT", None));
    let dump = generation(&proxy, 2).await;
    assert_eq!(app_port_mode(&dump), "STRICT");
    assert_eq!(dump["policy"]["ports"][0]["source"]["name"], "default");
    let held = &resource(&dump, "peerauthentications.security.istio.io/v1", Some("default"))["objects"][0];
    assert_eq!(held["object"], "PeerAuthentication default/default");
    assert_eq!(
        held["resource_version"],
        rv.to_string(),
        "config_dump names the resourceVersion in force"
    );
    assert!(
        !plaintext_passes(&proxy).await,
        "new plaintext is refused on the STRICT port"
    );
    assert!(
        echoes(&mut open, b"still flowing").await,
        "the open connection keeps its policy"
    );
    let mesh = tls_exchange(proxy.addr, client_config(&["istio"], Some(&pki.mesh_client())), b"mtls").await;
    assert_eq!(mesh.expect("mesh mTLS is terminated").reply, b"mtls");

    // Added: a workload policy for app=server sets PERMISSIVE again.
    api.apply(peer_authentication("default", "server", "PERMISSIVE", Some("server")));
    let dump = generation(&proxy, 3).await;
    assert_eq!(app_port_mode(&dump), "PERMISSIVE");
    assert_eq!(dump["policy"]["ports"][0]["source"]["level"], "workload");
    assert!(plaintext_passes(&proxy).await);

    // Deleted: the namespace's STRICT holds again.
    api.delete("PeerAuthentication", Some("default"), "server");
    let dump = generation(&proxy, 4).await;
    assert_eq!(app_port_mode(&dump), "STRICT");
    assert!(!plaintext_passes(&proxy).await);
    assert!(echoes(&mut open, b"and still").await);

    let scrape = scrape(&proxy).await;
    assert_eq!(sample(&scrape, "peerguard_policy_generation"), Some(4.0));
    assert_eq!(
        sample(&scrape, "peerguard_policy_reloads_total{result=\"ok\"}"),
        Some(3.0)
    );
    assert_eq!(
        api.count("list", "peerauthentications", "default"),
        1,
        "one list, then watch events only"
    );
}

#[tokio::test]
async fn the_initial_list_gives_the_same_decisions_as_the_same_documents_from_a_file() {
    // `peerguard check` compares the two on the seeds' policies (tests/check.rs); here the
    // running proxy: the same ports, modes, sources and authorization policies.
    let pki = Pki::new();
    let app = TestApp::start().await;
    let text = std::fs::read_to_string(Path::new(POLICIES).join("authorization.yaml")).unwrap()
        + "\n---\n"
        + &support::proxy::namespace_policy("STRICT", true);
    let api = KubeApi::start(ALL_GROUP_VERSIONS).await;
    api.apply_yaml(&text);
    let from_file = start_proxy(&pki, &text, app.addr, &[]).await;
    let from_cluster = start_proxy_on_cluster(&pki, &api, app.addr, &[]).await;
    let (file_dump, cluster_dump) = (config_dump(&from_file).await, config_dump(&from_cluster).await);
    for part in ["ports", "other_ports", "authorization_policies", "generation"] {
        assert_eq!(cluster_dump["policy"][part], file_dump["policy"][part], "{part}");
    }
    assert_eq!(file_dump["policy"]["source"]["kind"], "files");
    let source = &cluster_dump["policy"]["source"];
    assert_eq!(source["kind"], "kubernetes");
    assert_eq!(source["api_server"], format!("http://{}/", api.addr));
    assert_eq!(source["synced"], true);
    assert_eq!(source["reachable"], true);
}

#[tokio::test]
async fn a_watch_closed_by_the_server_resumes_from_its_resource_version_without_a_list() {
    let cluster = OnCluster::start(
        ALL_GROUP_VERSIONS,
        vec![peer_authentication("default", "default", "PERMISSIVE", None)],
    )
    .await;
    let (api, proxy) = (&cluster.api, &cluster.proxy);
    cluster.watches(1).await;
    // A bookmark moves the watch's resourceVersion on without any change to the objects.
    let bookmark = api.bookmark();
    // Give the bookmark a moment to arrive before the stream ends (it is not observable
    // from outside otherwise; the assertion below says whether it did).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    api.close_watches();
    cluster.watches(2).await;
    let watches: Vec<_> = api
        .log()
        .into_iter()
        .filter(|l| l.verb == "watch" && l.plural == "peerauthentications" && l.namespace.as_deref() == Some("default"))
        .collect();
    assert_eq!(
        watches[1].resource_version,
        Some(bookmark.to_string()),
        "resumed from the bookmark's resourceVersion"
    );
    assert_eq!(api.count("list", "peerauthentications", "default"), 1, "no new list");

    api.apply(peer_authentication("default", "default", "STRICT", None));
    let dump = generation(proxy, 2).await;
    assert_eq!(app_port_mode(&dump), "STRICT", "changes after the resume apply");
    assert!(!plaintext_passes(proxy).await);
    assert_eq!(dump["policy"]["source"]["outages"], 0, "a watch that ends is no outage");
}

#[tokio::test]
async fn a_410_gone_lists_again_and_the_list_brings_what_the_watch_missed() {
    let cluster = OnCluster::start(
        ALL_GROUP_VERSIONS,
        vec![peer_authentication("default", "default", "PERMISSIVE", None)],
    )
    .await;
    let (api, proxy) = (&cluster.api, &cluster.proxy);
    cluster.watches(1).await;
    // A change whose event was compacted away, then the watch ends: resuming gets 410.
    api.apply_unseen(peer_authentication("default", "default", "STRICT", None));
    api.close_watches();
    let dump = generation(proxy, 2).await;
    assert_eq!(app_port_mode(&dump), "STRICT", "the new list brought the missed change");
    assert!(!plaintext_passes(proxy).await);
    assert_eq!(
        api.count("list", "peerauthentications", "default"),
        2,
        "listed again after 410"
    );
    // Every watch (9: five kinds, two namespaces, MeshPolicy once) started before the change.
    metric_reaches(proxy.running.admin, "peerguard_kubernetes_relists_total", 9.0).await;
    let scrape = scrape(proxy).await;
    assert_eq!(sample(&scrape, "peerguard_kubernetes_api_outages_total"), Some(0.0));
}

#[tokio::test]
async fn an_api_server_outage_keeps_the_last_good_policy_and_recovers() {
    let OnCluster { pki, api, proxy, .. } = OnCluster::start(
        ALL_GROUP_VERSIONS,
        vec![peer_authentication("default", "default", "STRICT", None)],
    )
    .await;

    api.stop().await;
    let dump = eventually("the outage to show in config_dump", || async {
        let dump = config_dump(&proxy).await;
        (dump["policy"]["source"]["reachable"] == false).then_some(dump)
    })
    .await;
    let source = &dump["policy"]["source"];
    assert_eq!(source["outages"], 1);
    assert!(source["unreachable_since_unix"].as_u64().is_some(), "{source:#}");
    assert!(source["last_error"].as_str().is_some(), "{source:#}");
    assert_eq!(dump["policy"]["generation"], 1);
    assert_eq!(
        dump["ready"]["ready"], true,
        "an outage does not make the proxy unready"
    );
    // Traffic keeps the last good policy while the API server is away.
    assert!(!plaintext_passes(&proxy).await, "still STRICT");
    let mesh = tls_exchange(proxy.addr, client_config(&["istio"], Some(&pki.mesh_client())), b"m").await;
    assert_eq!(mesh.expect("mTLS still terminated").reply, b"m");
    metric_reaches(proxy.running.admin, "peerguard_kubernetes_api_reachable", 0.0).await;
    // Some retries while it is down.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    // The policy changes while peerguard cannot see it; the server comes back.
    api.apply(peer_authentication("default", "default", "PERMISSIVE", None));
    api.restart().await;
    let dump = generation(&proxy, 2).await;
    assert_eq!(app_port_mode(&dump), "PERMISSIVE");
    assert!(plaintext_passes(&proxy).await);
    let dump = eventually("reachable again", || async {
        let dump = config_dump(&proxy).await;
        (dump["policy"]["source"]["reachable"] == true).then_some(dump)
    })
    .await;
    assert_eq!(dump["policy"]["source"]["outages"], 1, "one outage counted");
    assert_eq!(dump["policy"]["source"]["unreachable_since_unix"], Value::Null);
    let scrape = scrape(&proxy).await;
    assert_eq!(sample(&scrape, "peerguard_kubernetes_api_outages_total"), Some(1.0));
    assert_eq!(sample(&scrape, "peerguard_kubernetes_api_reachable"), Some(1.0));
}

#[tokio::test]
async fn an_invalid_object_is_skipped_and_named_while_a_valid_one_beside_it_applies() {
    let OnCluster { api, proxy, .. } = OnCluster::start(
        ALL_GROUP_VERSIONS,
        vec![
            peer_authentication("default", "default", "STRICT", None),
            // As with validation bypassed: a workload policy whose mode is not a mode.
            peer_authentication("default", "bad", "Permissive", Some("server")),
        ],
    )
    .await;
    let dump = config_dump(&proxy).await;
    assert_eq!(app_port_mode(&dump), "STRICT", "the valid namespace policy applies");
    assert!(!plaintext_passes(&proxy).await);
    let objects = &resource(&dump, "peerauthentications.security.istio.io/v1", Some("default"))["objects"];
    let bad = objects
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == "PeerAuthentication default/bad")
        .expect("the invalid object is listed");
    let problem = bad["invalid"].as_str().expect("named as invalid");
    assert!(
        problem.starts_with("PeerAuthentication default/bad (kubernetes, resourceVersion ")
            && problem.ends_with("): spec.mtls.mode: \"Permissive\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
        "{problem}"
    );
    metric_reaches(proxy.running.admin, "peerguard_kubernetes_invalid_objects_total", 1.0).await;

    // Fixed: it applies, and is no longer counted.
    api.apply(peer_authentication("default", "bad", "PERMISSIVE", Some("server")));
    let dump = generation(&proxy, 2).await;
    assert_eq!(app_port_mode(&dump), "PERMISSIVE");
    assert!(plaintext_passes(&proxy).await);
    let scrape = scrape(&proxy).await;
    assert_eq!(sample(&scrape, "peerguard_kubernetes_invalid_objects_total"), Some(1.0));
}

#[tokio::test]
async fn missing_crds_are_empty_sets_and_v1beta1_is_read_where_v1_is_not_served() {
    let mut policy = peer_authentication("default", "default", "STRICT", None);
    policy["apiVersion"] = "security.istio.io/v1beta1".into();
    // Istio 1.5-1.21: security.istio.io/v1beta1 only, and no legacy authentication.istio.io.
    let OnCluster { api, proxy, .. } = OnCluster::start(&["security.istio.io/v1beta1"], vec![policy]).await;
    let dump = config_dump(&proxy).await;
    assert_eq!(app_port_mode(&dump), "STRICT");
    assert!(!plaintext_passes(&proxy).await);
    let pa = resource(&dump, "peerauthentications.security.istio.io/v1beta1", Some("default"));
    assert_eq!(pa["state"], "watching");
    for (plural, namespace) in [
        ("policies.authentication.istio.io", Some("default")),
        ("policies.authentication.istio.io", Some("istio-system")),
        ("meshpolicies.authentication.istio.io", None),
    ] {
        assert_eq!(resource(&dump, plural, namespace)["state"], "not_installed", "{plural}");
    }
    assert_eq!(
        api.count("list", "policies", "default"),
        0,
        "nothing is listed that is not served"
    );
}

#[tokio::test]
async fn a_403_names_the_verb_and_resource_and_readiness_waits_until_it_is_granted() {
    let pki = Pki::new();
    let app = TestApp::start().await;
    let api = KubeApi::start(ALL_GROUP_VERSIONS).await;
    api.apply(peer_authentication("default", "default", "STRICT", None));
    api.forbid("list", "authorizationpolicies", "istio-system");
    let proxy = start_proxy_on_cluster_unready(&pki, &api, app.addr, &[]).await;
    let expected = "may not list authorizationpolicies.security.istio.io in namespace istio-system (a Role there)";
    let answer = eventually("readiness to name the missing permission", || async {
        let answer = get(proxy.running.health, "/healthz/ready").await.ok()?;
        answer.body.contains(expected).then_some(answer)
    })
    .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer
            .body
            .starts_with("not ready: no policy in force yet: waiting for the first complete list"),
        "{}",
        answer.body
    );
    let dump = config_dump(&proxy).await;
    assert_eq!(dump["policy"]["generation"], 0, "no policy is in force");
    let denied = resource(
        &dump,
        "authorizationpolicies.security.istio.io/v1",
        Some("istio-system"),
    );
    assert_eq!(denied["state"], "forbidden");
    assert!(
        denied["error"]
            .as_str()
            .unwrap()
            .contains("cannot list resource \"authorizationpolicies\""),
        "the API server's words too: {denied:#}"
    );
    // A connection made meanwhile waits in the backlog and gets the policy once it is there.
    let waiting = tokio::spawn(plaintext_exchange(proxy.addr, b"early"));

    api.allow("list", "authorizationpolicies", "istio-system");
    support::proxy::wait_until_ready(&proxy).await;
    let dump = generation(&proxy, 1).await;
    assert_eq!(app_port_mode(&dump), "STRICT");
    let early = waiting.await.unwrap();
    assert!(
        early.map(|reply| reply.is_empty()).unwrap_or(true),
        "the early plaintext connection was decided on STRICT, not on no policy"
    );
}

#[tokio::test]
async fn a_labels_file_change_resolves_every_port_again_with_either_source() {
    for from in [PolicyFrom::File, PolicyFrom::Kubernetes] {
        let (pki, app, dir) = (Pki::new(), TestApp::start().await, TestDir::new("labels"));
        let labels = dir.path().join("labels");
        std::fs::write(&labels, "app=\"other\"\npod-template-hash=\"5f6b\"\n").unwrap();
        let policy =
            serde_yaml_ng::to_string(&peer_authentication("default", "server", "STRICT", Some("server"))).unwrap();
        let labels_arg = labels.display().to_string();
        let (proxy, _cluster) = start_proxy_from(from, &pki, &policy, app.addr, &["--labels-file", &labels_arg]).await;
        let dump = generation(&proxy, 1).await;
        assert_eq!(
            app_port_mode(&dump),
            "PERMISSIVE",
            "the workload policy does not select app=other"
        );
        assert!(plaintext_passes(&proxy).await);

        // `kubectl label pod ... app=server --overwrite`: the kubelet rewrites the file.
        std::fs::write(&labels, "app=\"server\"\npod-template-hash=\"5f6b\"\n").unwrap();
        let dump = generation(&proxy, 2).await;
        assert_eq!(app_port_mode(&dump), "STRICT", "policy from {from:?}");
        assert_eq!(dump["workload"]["labels"]["app"], "server");
        assert!(!plaintext_passes(&proxy).await);
    }
}

#[test]
fn policy_files_and_the_kubernetes_source_are_one_or_the_other() {
    use clap::Parser;
    use peerguard::cli::{Cli, Command};
    let line = [
        "peerguard",
        "run",
        "--listen",
        "127.0.0.1:0=127.0.0.1:1",
        "--cert-dir",
        "/nonexistent",
        "--policy",
        "p.yaml",
        "--kubeconfig",
        "k",
    ];
    let Command::Run(args) = Cli::try_parse_from(line).unwrap().command else {
        panic!("run");
    };
    let error = peerguard::config::Config::from_args(&args).unwrap_err().to_string();
    assert_eq!(
        error,
        "--policy reads files: it cannot be combined with --policy-source kubernetes or --kubeconfig"
    );
}

#[test]
fn outside_a_pod_without_a_kubeconfig_run_says_what_it_needs_and_exits_1() {
    let pki = Pki::new();
    let certs = pki.write("certs", &pki.server).display().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_peerguard"))
        .args([
            "run",
            "--policy-source",
            "kubernetes",
            "--inbound",
            "none",
            "--listen",
            "127.0.0.1:0=127.0.0.1:1",
        ])
        .args([
            "--admin",
            "127.0.0.1:0",
            "--health",
            "127.0.0.1:0",
            "--metrics",
            "none",
            "--cert-dir",
            &certs,
        ])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("peerguard runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy source: not inside a Kubernetes pod (")
            && stderr.contains("give --kubeconfig FILE outside a cluster"),
        "{stderr}"
    );
}
