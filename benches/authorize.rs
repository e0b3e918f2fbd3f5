//! The per-connection authorization step: `Authorizer::verdict` over one DENY and one ALLOW
//! policy of a few rules each, compiled once as the proxy will per policy generation.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use peerguard::policy::authorization::ConnectionFacts;
use peerguard::policy::{PolicySet, Workload};
use peerguard::tls::identity::SpiffeId;

const POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: bench}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [legacy, old-*]}}]
  - from: [{source: {ipBlocks: [192.0.2.0/24, 198.51.100.0/24]}}]
  - to: [{operation: {ports: ['9999']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-app, namespace: bench}
spec:
  selector: {matchLabels: {app: bench}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web, cluster.local/ns/frontend/sa/api]}}]
    to: [{operation: {ports: ['8080']}}]
  - from: [{source: {principals: ['cluster.local/ns/batch/*']}}]
    when: [{key: connection.sni, values: ['*.bench.svc.cluster.local']}]
  - from: [{source: {namespaces: [bench]}}]
    to: [{operation: {ports: ['8080', '8443']}}]
";

fn verdict(c: &mut Criterion) {
    let set = PolicySet::parse_str(POLICY, "bench.yaml")
        .expect("the bench policy parses")
        .set;
    let workload = Workload {
        namespace: "bench".into(),
        labels: BTreeMap::from([("app".into(), "bench".into())]),
        root_namespace: "istio-system".into(),
    };
    let authorizer = set.authorizer(&workload, "cluster.local");
    let same_namespace: SpiffeId = "spiffe://cluster.local/ns/bench/sa/client".parse().unwrap();
    let legacy: SpiffeId = "spiffe://cluster.local/ns/legacy/sa/client".parse().unwrap();
    // The allow by the last ALLOW rule walks every DENY rule and two ALLOW rules first.
    let cases = [
        ("allow_by_last_rule", facts(Some(&same_namespace), 8443)),
        ("deny_by_first_rule", facts(Some(&legacy), 8080)),
        ("plaintext_no_allow_matched", facts(None, 8080)),
    ];
    let mut group = c.benchmark_group("authorize");
    for (name, facts) in &cases {
        group.bench_function(*name, |b| b.iter(|| authorizer.verdict(black_box(facts))));
    }
    group.finish();
}

/// A connection from 10.0.3.4 with an SNI in the workload's domain.
fn facts(peer: Option<&SpiffeId>, port: u16) -> ConnectionFacts<'_> {
    ConnectionFacts {
        peer,
        source_ip: Some("10.0.3.4".parse().unwrap()),
        destination_ip: Some("10.0.0.9".parse().unwrap()),
        port,
        sni: Some("app.bench.svc.cluster.local"),
    }
}

criterion_group!(benches, verdict);
criterion_main!(benches);
