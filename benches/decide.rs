//! The two pure steps every connection pays before any byte moves: resolving the workload
//! port's mode from the loaded policy snapshot (one hash lookup, named port or not), and
//! `decide` over the rows of the decision table (docs/connections.md#the-decision-table) that
//! take different code paths.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use peerguard::inbound::classify::Sniffed;
use peerguard::inbound::decide::decide;
use peerguard::policy::{MtlsMode, PolicySet, Workload};
use peerguard::store::PolicySnapshot;
use peerguard::tls::client_hello::ClientHello;

/// A namespace-level PERMISSIVE policy and a workload policy naming two ports, so the snapshot
/// has both named ports and the "every other port" answer.
const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bench}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: app, namespace: bench}
spec:
  selector: {matchLabels: {app: bench}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
    9090: {mode: DISABLE}
";

fn hello(alpns: &[&str]) -> Sniffed {
    Sniffed::Tls(ClientHello {
        sni: Some("app.bench.svc.cluster.local".into()),
        alpn: alpns.iter().map(|a| a.as_bytes().to_vec()).collect(),
    })
}

fn decide_table(c: &mut Criterion) {
    // The mesh marker last, so the ALPN scan walks the whole list before it matches.
    let cases = [
        ("strict_plaintext", MtlsMode::Strict, Sniffed::Plaintext, false),
        ("strict_tls", MtlsMode::Strict, hello(&["h2"]), false),
        ("permissive_plaintext", MtlsMode::Permissive, Sniffed::Plaintext, false),
        (
            "permissive_istio_last",
            MtlsMode::Permissive,
            hello(&["h2", "http/1.1", "istio"]),
            false,
        ),
        (
            "permissive_app_tls",
            MtlsMode::Permissive,
            hello(&["h2", "http/1.1"]),
            false,
        ),
        (
            "permissive_http_alpn_on",
            MtlsMode::Permissive,
            hello(&["h2", "http/1.1"]),
            true,
        ),
        ("disable_not_read", MtlsMode::Disable, Sniffed::NotRead, false),
    ];
    let mut group = c.benchmark_group("decide");
    for (name, mode, sniffed, http_alpn) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| decide(black_box(*mode), black_box(sniffed), black_box(*http_alpn)))
        });
    }
    group.finish();
}

fn snapshot_port(c: &mut Criterion) {
    let loaded = PolicySet::parse_str(POLICY, "bench.yaml").expect("the bench policy parses");
    let workload = Workload {
        namespace: "bench".into(),
        labels: BTreeMap::from([("app".into(), "bench".into())]),
        root_namespace: "istio-system".into(),
    };
    let snapshot = PolicySnapshot::new(1, workload, &Default::default(), "cluster.local", loaded);
    assert_eq!(snapshot.port(9090).policy.mode, MtlsMode::Disable);
    assert_eq!(snapshot.port(443).policy.mode, MtlsMode::Strict);

    let mut group = c.benchmark_group("policy_snapshot_port");
    for (name, port) in [("named_port", 8080u16), ("other_port", 443)] {
        group.bench_function(name, |b| b.iter(|| snapshot.port(black_box(port)).policy.mode));
    }
    group.finish();
}

criterion_group!(benches, decide_table, snapshot_port);
criterion_main!(benches);
