//! Policy text to a validated `PolicySet`, then resolution of every port for fixed workloads
//! (`scripts/fuzz policy`). Input that is not UTF-8 is skipped: policies are read as text.
//!
//! Beyond "never panics": every message (error or warning) formats; for each workload, with and
//! without `--app-protocol` overrides, `resolve_ports` lists each named port once, in order,
//! with the answer `resolve` and `protocol` give for it; the HTTP ALPN flag only on PERMISSIVE,
//! a missing mode source only with the PERMISSIVE default, a protocol source exactly when the
//! protocol is known; and the shared answer for unnamed ports is what any unnamed port gets.

use std::collections::BTreeMap;
use std::fmt::Write;

use peerguard::policy::{AppProtocol, MtlsMode, PolicySet, PortPolicy, PortProtocol, ProtocolOverrides, Workload};

fn main() {
    let workloads = [
        workload("foo", &[("app", "finance"), ("version", "v1")]),
        workload("foo", &[("app", "httpbin")]),
        workload("default", &[("app", "httpbin")]),
    ];
    let overrides = [
        ProtocolOverrides::default(),
        ProtocolOverrides::new(&[
            (80, AppProtocol::Http1),
            (8080, AppProtocol::Http2),
            (9000, AppProtocol::Tcp),
        ])
        .expect("distinct ports"),
    ];
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        check(text, "fuzz.yaml", &workloads, &overrides);
        if text.trim_start().starts_with('{') {
            check(text, "fuzz.json", &workloads, &overrides);
        }
    });
}

fn workload(namespace: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: namespace.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        root_namespace: "istio-system".to_string(),
    }
}

fn check(text: &str, source: &str, workloads: &[Workload], overrides: &[ProtocolOverrides]) {
    let mut messages = String::new();
    let loaded = match PolicySet::parse_str(text, source) {
        Ok(loaded) => loaded,
        Err(error) => {
            write!(messages, "{error}").unwrap();
            assert!(!messages.is_empty(), "an empty error message");
            return;
        }
    };
    for warning in &loaded.warnings {
        write!(messages, "{warning}").unwrap();
    }
    let set = &loaded.set;
    for workload in workloads {
        for warning in set.warnings_for(workload) {
            write!(messages, "{warning}").unwrap();
        }
        for overrides in overrides {
            check_ports(set, workload, overrides);
        }
    }
}

fn check_ports(set: &PolicySet, workload: &Workload, overrides: &ProtocolOverrides) {
    let ports = set.resolve_ports(workload, overrides);
    let known = set.known_ports(workload, overrides);
    let named: Vec<u16> = ports.named.iter().map(|p| p.policy.port).collect();
    assert_eq!(named, known.iter().copied().collect::<Vec<_>>(), "named ports");
    for resolved in &ports.named {
        let port = resolved.policy.port;
        check_policy(port, &resolved.policy);
        check_protocol(&resolved.protocol);
        assert_eq!(resolved.policy, set.resolve(workload, port), "port {port}");
        assert_eq!(
            resolved.protocol,
            set.protocol(workload, port, overrides),
            "port {port}"
        );
        assert_eq!(ports.port(port), resolved, "lookup of port {port}");
    }
    for override_port in overrides.ports() {
        assert!(
            known.contains(&override_port),
            "--app-protocol port {override_port} is not named"
        );
    }
    // Ports nothing names: the shared answer, whichever of them is asked.
    assert_eq!(ports.other.policy.port, 0);
    check_protocol(&ports.other.protocol);
    let unnamed = (1..=u16::MAX).rev().filter(|port| !known.contains(port)).take(2);
    for port in unnamed {
        let policy = set.resolve(workload, port);
        check_policy(port, &policy);
        assert_eq!(
            PortPolicy { port: 0, ..policy },
            ports.other.policy,
            "unnamed port {port}"
        );
        assert_eq!(
            set.protocol(workload, port, overrides),
            ports.other.protocol,
            "unnamed port {port}"
        );
        assert_eq!(ports.port(port), &ports.other, "lookup of unnamed port {port}");
    }
}

fn check_policy(port: u16, answer: &PortPolicy) {
    assert_eq!(answer.port, port);
    if answer.http_alpn {
        assert_eq!(answer.mode, MtlsMode::Permissive, "HTTP ALPN on a non-PERMISSIVE port");
    }
    if answer.source.is_none() {
        assert_eq!(answer.mode, MtlsMode::Permissive, "a mode without a source");
    }
}

fn check_protocol(answer: &PortProtocol) {
    assert_eq!(
        answer.source.is_none(),
        answer.protocol == AppProtocol::Unknown,
        "protocol and its source disagree: {answer:?}"
    );
}
