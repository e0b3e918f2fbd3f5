//! App protocols: Istio's reading of port names and `appProtocol`, `--app-protocol`, and which
//! Service holds when several declare a workload port.

use super::*;
use crate::policy::test_support::{policies, service, workload};
use crate::policy::PolicySet;

#[test]
fn port_names_and_app_protocols_read_as_istio_reads_them() {
    use AppProtocol::{Http1, Http2, Tcp};
    let cases: [(&str, Option<AppProtocol>); 24] = [
        ("http", Some(Http1)),
        ("http-web", Some(Http1)),
        ("HTTP-Web", Some(Http1)),
        ("http1", Some(Http1)),
        ("http_proxy", Some(Http1)),
        ("http2", Some(Http2)),
        ("http2-api", Some(Http2)),
        ("grpc", Some(Http2)),
        ("grpc-backend", Some(Http2)),
        ("grpc-web", Some(Http2)),
        ("GRPC-Web-ui", Some(Http2)),
        ("h2c", Some(Http2)),
        ("tcp-db", Some(Tcp)),
        ("tls", Some(Tcp)),
        ("https-app", Some(Tcp)),
        ("mongo", Some(Tcp)),
        ("mysql", Some(Tcp)),
        ("redis-cache", Some(Tcp)),
        ("kubernetes.io/h2c", Some(Http2)),
        ("kubernetes.io/ws", Some(Http1)),
        ("kubernetes.io/wss", Some(Tcp)),
        ("httpx", None),
        ("udp-dns", None),
        ("web", None),
    ];
    for (text, expected) in cases {
        assert_eq!(AppProtocol::declared_by(text), expected, "{text}");
    }
    assert_eq!(AppProtocol::declared_by(""), None);
}

#[test]
fn app_protocol_flags_are_port_equals_protocol() {
    assert_eq!(parse_override("8080=http1"), Ok((8080, AppProtocol::Http1)));
    assert_eq!(parse_override("9090=http2"), Ok((9090, AppProtocol::Http2)));
    assert_eq!(parse_override("5432=tcp"), Ok((5432, AppProtocol::Tcp)));
    let bad = [
        ("8080", "`8080`: expected PORT=PROTOCOL, e.g. 8080=http2"),
        ("0=http1", "`0` is not a port number (1..65535)"),
        ("70000=http1", "`70000` is not a port number (1..65535)"),
        ("web=http1", "`web` is not a port number (1..65535)"),
        ("8080=grpc", "`grpc` is not an app protocol: use http1, http2 or tcp"),
        (
            "8080=unknown",
            "`unknown` is not an app protocol: use http1, http2 or tcp",
        ),
    ];
    for (text, message) in bad {
        assert_eq!(parse_override(text), Err(message.to_string()), "{text}");
    }
}

#[test]
fn a_port_given_twice_must_agree() {
    let same = ProtocolOverrides::new(&[(8080, AppProtocol::Http2), (8080, AppProtocol::Http2)]).unwrap();
    assert_eq!(same.ports().collect::<Vec<_>>(), [8080]);
    let error = ProtocolOverrides::new(&[(8080, AppProtocol::Http1), (8080, AppProtocol::Tcp)]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--app-protocol names port 8080 twice, as http1 and as tcp"
    );
}

fn web(name: &str, created: &str, ports: &str) -> String {
    let metadata = format!("creationTimestamp: '{created}'");
    service(
        "foo",
        name,
        "{}",
        &format!("{{selector: {{app: web}}, ports: {ports}}}"),
    )
    .replace("annotations: {}", &metadata)
}

/// `(protocol, source)` of `port` for the `app=web` workload in `foo`.
fn protocol_of(set: &PolicySet, port: u16, overrides: &ProtocolOverrides) -> (AppProtocol, String) {
    let resolved = set.protocol(&workload("foo", &[("app", "web")]), port, overrides);
    (resolved.protocol, resolved.source.unwrap_or_default())
}

#[test]
fn a_workload_port_gets_the_protocol_its_service_port_declares() {
    let set = policies(&[web(
        "web",
        "2024-01-01T00:00:00Z",
        "[{name: http-web, port: 80, targetPort: 8080}, {name: api, port: 81, targetPort: 8081, appProtocol: grpc}, \
         {name: http, port: 82, targetPort: 8082, appProtocol: custom}, {name: db, port: 3306}, {name: metrics, port: 9090}]",
    )]);
    let none = ProtocolOverrides::default();
    let cases = [
        (8080, AppProtocol::Http1, "Service foo/web port 80 (name http-web)"),
        (8081, AppProtocol::Http2, "Service foo/web port 81 (appProtocol grpc)"),
        // Istio reads the name only when appProtocol is absent, even if it cannot read the value.
        (8082, AppProtocol::Unknown, ""),
        (
            3306,
            AppProtocol::Tcp,
            "Service foo/web port 3306 (well-known port 3306)",
        ),
        (9090, AppProtocol::Unknown, ""),
        (80, AppProtocol::Unknown, ""),
    ];
    for (port, protocol, source) in cases {
        assert_eq!(
            protocol_of(&set, port, &none),
            (protocol, source.to_string()),
            "port {port}"
        );
    }
}

#[test]
fn the_app_protocol_flag_beats_every_service() {
    let set = policies(&[web(
        "web",
        "2024-01-01T00:00:00Z",
        "[{name: grpc, port: 80, targetPort: 8080}]",
    )]);
    let overrides = ProtocolOverrides::new(&[(8080, AppProtocol::Http1), (7000, AppProtocol::Tcp)]).unwrap();
    assert_eq!(
        protocol_of(&set, 8080, &overrides),
        (AppProtocol::Http1, "--app-protocol 8080=http1".to_string())
    );
    let known = set.known_ports(&workload("foo", &[("app", "web")]), &overrides);
    assert_eq!(known.into_iter().collect::<Vec<_>>(), [7000, 8080]);
}

#[test]
fn services_that_do_not_select_the_workload_declare_nothing_for_it() {
    let other = service(
        "foo",
        "other",
        "{}",
        "{selector: {app: other}, ports: [{name: grpc, port: 80, targetPort: 8080}]}",
    );
    let elsewhere = service(
        "bar",
        "web",
        "{}",
        "{selector: {app: web}, ports: [{name: grpc, port: 80, targetPort: 8080}]}",
    );
    let set = policies(&[other, elsewhere]);
    assert_eq!(
        protocol_of(&set, 8080, &ProtocolOverrides::default()),
        (AppProtocol::Unknown, String::new())
    );
}

#[test]
fn when_services_disagree_the_oldest_holds_and_the_others_are_warned_about() {
    let set = policies(&[
        web(
            "young",
            "2024-06-01T00:00:00Z",
            "[{name: http2, port: 80, targetPort: 8080}]",
        ),
        web(
            "old",
            "2024-01-01T00:00:00Z",
            "[{port: 80, targetPort: 8080, appProtocol: http}]",
        ),
        web(
            "agrees",
            "2024-03-01T00:00:00Z",
            "[{name: http-x, port: 80, targetPort: 8080}]",
        ),
        web(
            "silent",
            "2023-01-01T00:00:00Z",
            "[{name: web, port: 80, targetPort: 8080}]",
        ),
    ]);
    assert_eq!(
        protocol_of(&set, 8080, &ProtocolOverrides::default()),
        (
            AppProtocol::Http1,
            "Service foo/old port 80 (appProtocol http)".to_string()
        )
    );
    let warnings = set.warnings_for(&workload("foo", &[("app", "web")]));
    let messages: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "test.yaml: document 0 (Service foo/young): spec.ports[0].name: declares http2 for workload port 8080, \
          but Service foo/old port 80 (appProtocol http) declares http1, which holds (the oldest Service wins; \
          --app-protocol beats both)"
        ]
    );
}

#[test]
fn within_one_service_the_lower_service_port_holds() {
    let set = policies(&[web(
        "web",
        "2024-01-01T00:00:00Z",
        "[{name: grpc, port: 9000, targetPort: 8080}, {name: http, port: 80, targetPort: 8080}]",
    )]);
    assert_eq!(
        protocol_of(&set, 8080, &ProtocolOverrides::default()),
        (AppProtocol::Http1, "Service foo/web port 80 (name http)".to_string())
    );
    let warnings = set.warnings_for(&workload("foo", &[("app", "web")]));
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].path, "spec.ports[0].name");
}
