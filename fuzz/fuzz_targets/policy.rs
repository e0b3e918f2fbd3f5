//! Policy text to a validated `PolicySet`, then resolution for fixed workloads
//! (`scripts/fuzz policy`). Input that is not UTF-8 is skipped: policies are read as text.
//!
//! Beyond "never panics": every message (error or warning) formats; for each workload, every
//! port the set names resolves to an answer for that port, with the HTTP ALPN flag only on
//! PERMISSIVE and a missing source only with the PERMISSIVE default; and ports no policy names
//! all get the same answer, as `PolicySet::resolve` promises.

use std::collections::BTreeMap;
use std::fmt::Write;

use peerguard::policy::{MtlsMode, PolicySet, PortPolicy, Workload};

fn main() {
    let workloads = [
        workload("foo", &[("app", "finance"), ("version", "v1")]),
        workload("foo", &[("app", "httpbin")]),
        workload("default", &[("app", "httpbin")]),
    ];
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        check(text, "fuzz.yaml", &workloads);
        if text.trim_start().starts_with('{') {
            check(text, "fuzz.json", &workloads);
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

fn check(text: &str, source: &str, workloads: &[Workload]) {
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
        let known = set.known_ports(workload);
        for &port in &known {
            check_answer(port, &set.resolve(workload, port));
        }
        // Two ports no policy names get the same answer.
        let mut unnamed = (1..=u16::MAX).rev().filter(|port| !known.contains(port));
        if let (Some(a), Some(b)) = (unnamed.next(), unnamed.next()) {
            let (answer_a, answer_b) = (set.resolve(workload, a), set.resolve(workload, b));
            check_answer(a, &answer_a);
            check_answer(b, &answer_b);
            assert_eq!(
                PortPolicy { port: 0, ..answer_a },
                PortPolicy { port: 0, ..answer_b },
                "ports {a} and {b}, named by no policy, resolve differently"
            );
        }
    }
}

fn check_answer(port: u16, answer: &PortPolicy) {
    assert_eq!(answer.port, port);
    if answer.http_alpn {
        assert_eq!(answer.mode, MtlsMode::Permissive, "HTTP ALPN on a non-PERMISSIVE port");
    }
    if answer.source.is_none() {
        assert_eq!(answer.mode, MtlsMode::Permissive, "a mode without a source");
    }
}
