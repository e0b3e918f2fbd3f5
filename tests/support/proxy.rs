//! peerguard started in-process on loopback, through the same command-line path as
//! `peerguard run`, with port-0 listeners so tests can run in parallel.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::net::SocketAddr;

use clap::Parser;
use peerguard::app::Running;
use peerguard::cli::{Cli, Command};

use super::admin::{eventually, get};
use super::kube_api::KubeApi;
use super::pki::{Pki, TestDir};

/// A policy making the `default` namespace's mode `mode`, optionally with the HTTP ALPN
/// annotation on.
pub fn namespace_policy(mode: &str, http_alpn: bool) -> String {
    let annotation = if http_alpn {
        "\n  annotations:\n    http-alpns.aspenmesh.io: \"true\""
    } else {
        ""
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default{annotation}\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

pub struct Proxy {
    /// The explicit listener in front of the app.
    pub addr: SocketAddr,
    pub running: Running,
    pub dir: TestDir,
}

/// Where a test proxy reads its policy: the conformance tables run against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFrom {
    /// `--policy FILE`.
    File,
    /// `--policy-source kubernetes --kubeconfig FILE`, against the test API server.
    Kubernetes,
}

/// Starts peerguard as [`start_proxy`] does, with `policy` read from `from`. With the
/// Kubernetes source the documents are created in a fresh test API server (returned, to keep
/// it up) and this returns once their first complete list is in force.
pub async fn start_proxy_from(
    from: PolicyFrom,
    pki: &Pki,
    policy: &str,
    app: SocketAddr,
    extra: &[&str],
) -> (Proxy, Option<KubeApi>) {
    match from {
        PolicyFrom::File => (start_proxy(pki, policy, app, extra).await, None),
        PolicyFrom::Kubernetes => {
            let api = KubeApi::start(super::kube_api::ALL_GROUP_VERSIONS).await;
            api.apply_yaml(policy);
            let proxy = start_proxy_on_cluster(pki, &api, app, extra).await;
            (proxy, Some(api))
        }
    }
}

/// Starts peerguard for workload `app=server` in namespace `default` with its policy from the
/// test API server `api`; returns once the first complete list is in force (readiness 200).
pub async fn start_proxy_on_cluster(pki: &Pki, api: &KubeApi, app: SocketAddr, extra: &[&str]) -> Proxy {
    let proxy = start_proxy_on_cluster_unready(pki, api, app, extra).await;
    wait_until_ready(&proxy).await;
    proxy
}

/// As [`start_proxy_on_cluster`], returning as soon as the listeners are bound: before any
/// policy may be in force.
pub async fn start_proxy_on_cluster_unready(pki: &Pki, api: &KubeApi, app: SocketAddr, extra: &[&str]) -> Proxy {
    let kubeconfig = api.kubeconfig().display().to_string();
    let mut source = vec![
        "--policy-source",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--kube-retry-max",
        "200ms",
    ];
    source.extend(extra);
    start_proxy_with(pki, None, &[app], &source).await
}

/// Waits until the proxy's readiness probe answers 200.
pub async fn wait_until_ready(proxy: &Proxy) {
    eventually("the proxy to be ready", || async {
        let answer = get(proxy.running.health, "/healthz/ready").await.ok()?;
        (answer.status == 200).then_some(())
    })
    .await
}

/// Starts peerguard for workload `app=server` in namespace `default` with `policy`, one
/// explicit listener in front of `app`, and the mesh server certificate of `pki`.
pub async fn start_proxy(pki: &Pki, policy: &str, app: SocketAddr, extra: &[&str]) -> Proxy {
    start_proxy_with(pki, Some(policy), &[app], extra).await
}

/// [`start_proxy`] with one explicit listener in front of each of `apps`, in order
/// (`running.explicit[i]` serves `apps[i]`; `addr` is the first).
pub async fn start_proxy_for(pki: &Pki, policy: &str, apps: &[SocketAddr], extra: &[&str]) -> Proxy {
    start_proxy_with(pki, Some(policy), apps, extra).await
}

/// `policy`: written to a file and given as `--policy`; `None` when `extra` names the source.
/// The labels are `app=server` unless `extra` gives `--labels-file`.
pub async fn start_proxy_with(pki: &Pki, policy: Option<&str>, apps: &[SocketAddr], extra: &[&str]) -> Proxy {
    let dir = TestDir::new("proxy");
    let certs = pki.write("proxy-certs", &pki.server);
    let mut line = run_line_for(apps);
    if !extra.contains(&"--labels-file") {
        line.extend(["--labels".into(), "app=server".into()]);
    }
    line.extend(["--cert-dir".into(), certs.display().to_string()]);
    if let Some(policy) = policy {
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy).expect("write policy");
        line.extend(["--policy".into(), policy_file.display().to_string()]);
    }
    line.extend(extra.iter().map(|word| word.to_string()));
    let running = start_run_line(&line).await;
    Proxy {
        addr: running.explicit[0],
        running,
        dir,
    }
}

/// `peerguard run` for workload `app=server` in namespace `default`, one explicit listener in
/// front of `app`, every other port picked by the kernel; certificates and policy to add.
pub fn run_line(app: SocketAddr) -> Vec<String> {
    let mut line = run_line_for(&[app]);
    line.extend(["--labels".into(), "app=server".into()]);
    line
}

/// `peerguard run` in namespace `default` (labels to add) with one explicit listener in front
/// of each of `apps`, in order, and every other port picked by the kernel.
fn run_line_for(apps: &[SocketAddr]) -> Vec<String> {
    let mut line: Vec<String> = ["peerguard", "run", "--inbound", "none"].map(String::from).to_vec();
    for app in apps {
        line.extend(["--listen".into(), format!("127.0.0.1:0={app}")]);
    }
    line.extend(["--namespace", "default"].map(String::from));
    line.extend(FREE_ENDPOINTS.map(String::from));
    line
}

/// Admin, health and metrics on ports the kernel picks, so tests run in parallel.
pub const FREE_ENDPOINTS: [&str; 6] = [
    "--admin",
    "127.0.0.1:0",
    "--health",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
];

/// Starts peerguard in this process from a `peerguard run ...` command line, through the same
/// parsing and validation as the binary.
pub async fn start_run_line<S: AsRef<str>>(line: &[S]) -> Running {
    let line: Vec<&str> = line.iter().map(AsRef::as_ref).collect();
    let Command::Run(args) = Cli::try_parse_from(&line).expect("run command line").command else {
        panic!("not a run command");
    };
    let config = peerguard::config::Config::from_args(&args).expect("config");
    peerguard::app::start(&config).await.expect("proxy starts")
}
