//! `peerguard audit`: a running proxy's STRICT audit (its admin `/strict_audit`), printed for
//! a person deciding whether a namespace can move to STRICT (docs/strict-audit.md): per port,
//! the mode, the connections seen, the share STRICT would refuse, and the sources to fix first.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::cli::{AuditArgs, OutputFormat};
use crate::policy::MtlsMode;
use crate::strict_audit::report::{AuditReport, PortReport, SourceReport};
use crate::tls::identity::Rfc3339;

const PATH: &str = "/strict_audit";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The admin endpoint answers from memory; this is for a wedged or wrong peer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// 128 ports of 256 sources is a few MiB of JSON; anything far past it is not our document.
const MAX_RESPONSE: u64 = 64 << 20;

pub fn run(args: &AuditArgs) -> anyhow::Result<()> {
    let body = fetch(args.admin)?;
    match args.output {
        OutputFormat::Json => print!("{body}"),
        OutputFormat::Text => {
            let report: AuditReport = serde_json::from_str(&body)
                .with_context(|| format!("http://{}{PATH} did not answer with an audit document", args.admin))?;
            print!("{}", text(&report, args.top));
        }
    }
    Ok(())
}

/// `GET /strict_audit` from the admin endpoint: the body of a 200 answer.
fn fetch(admin: SocketAddr) -> anyhow::Result<String> {
    let url = format!("http://{admin}{PATH}");
    let unreachable =
        || format!("cannot reach the admin endpoint {admin} (is peerguard running with --admin {admin}?)");
    let mut stream = TcpStream::connect_timeout(&admin, CONNECT_TIMEOUT).with_context(unreachable)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let request = format!("GET {PATH} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).with_context(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {url}"))?;
    let text = String::from_utf8(raw).with_context(|| format!("{url} answered with bytes that are not UTF-8"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{url} did not answer with an HTTP response");
    };
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).unwrap_or("");
    // The admin server sends whole bodies with a length; a chunked one is some other server.
    if lines.any(|line| line.to_ascii_lowercase().starts_with("transfer-encoding:")) {
        bail!("{url} answered with a transfer encoding; is {admin} peerguard's admin endpoint?");
    }
    match status {
        "200" => Ok(body.to_owned()),
        "404" => bail!("{url} is not served here: is {admin} the admin endpoint of a peerguard with the STRICT audit?"),
        other => bail!("{url} answered {other}: {}", body.trim()),
    }
}

/// The audit for a person: the summary table, then each port's sources to fix first.
fn text(report: &AuditReport, top: usize) -> String {
    let since = Rfc3339(UNIX_EPOCH + Duration::from_secs(report.since_unix));
    let mut out = format!(
        "STRICT audit since {since}: what each PERMISSIVE and DISABLE port's connections would meet under STRICT.\n\n"
    );
    if report.ports.is_empty() {
        out.push_str("No connection on a PERMISSIVE or DISABLE port yet.\n");
        return out;
    }
    out.push_str(&summary(&report.ports));
    for port in &report.ports {
        out.push('\n');
        out.push_str(&port_sources(port, top, report.max_sources_per_port));
    }
    if report.untracked_connections > 0 {
        let _ = writeln!(
            out,
            "\n{} connections on ports past the first {} are counted in peerguard_strict_audit_total only.",
            report.untracked_connections, report.max_ports
        );
    }
    if report.ports.iter().any(|port| port.unknown > 0) {
        out.push_str(
            "\nunknown: TLS that peerguard passed through untouched (the app's own TLS, or any TLS on a DISABLE \
             port). STRICT terminates it and lets it pass only if the client presents a mesh certificate.\n",
        );
    }
    out
}

fn summary(ports: &[PortReport]) -> String {
    let header = [
        "PORT",
        "MODE",
        "CONNECTIONS",
        "WOULD PASS",
        "WOULD BE REFUSED",
        "UNKNOWN",
    ]
    .map(String::from);
    let rows = std::iter::once(header).chain(ports.iter().map(|port| {
        [
            port.port.to_string(),
            port.mode.as_str().to_owned(),
            port.connections.to_string(),
            port.pass.to_string(),
            share(port.refuse, port.connections),
            share(port.unknown, port.connections),
        ]
    }));
    crate::columns::render(&rows.collect::<Vec<_>>())
}

/// `n (p%)` of `total`.
fn share(n: u64, total: u64) -> String {
    if total == 0 {
        return n.to_string();
    }
    format!("{n} ({:.1}%)", n as f64 * 100.0 / total as f64)
}

fn port_sources(port: &PortReport, top: usize, max_sources: usize) -> String {
    let mut out = String::new();
    let heading = if port.mode == MtlsMode::Strict {
        format!("Port {} (STRICT now; what follows came before the switch)", port.port)
    } else {
        format!("Port {} ({})", port.port, port.mode.as_str())
    };
    if port.sources.is_empty() {
        let _ = writeln!(out, "{heading}: every connection seen would pass under STRICT.");
        return out;
    }
    let _ = writeln!(out, "{heading}, sources to fix first:");
    let shown = if top == 0 {
        port.sources.len()
    } else {
        top.min(port.sources.len())
    };
    let header = [
        "SOURCE",
        "KIND",
        "VERDICT",
        "CONNECTIONS",
        "FIRST SEEN",
        "LAST SEEN",
        "SNI",
        "ALPN",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = std::iter::once(header)
        .chain(port.sources[..shown].iter().map(source_row))
        .collect();
    for line in crate::columns::render(&rows).lines() {
        let _ = writeln!(out, "  {}", line.trim_end());
    }
    if shown < port.sources.len() {
        let _ = writeln!(
            out,
            "  ... and {} more (--top 0 lists them all).",
            port.sources.len() - shown
        );
    }
    if port.evicted_sources > 0 {
        let _ = writeln!(
            out,
            "  {} sources were dropped to make room: the table keeps the {max_sources} most recently seen.",
            port.evicted_sources
        );
    }
    out
}

fn source_row(source: &SourceReport) -> [String; 8] {
    let seen = |unix: u64| Rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(unix)).to_string();
    let alpn = if source.alpn.is_empty() {
        "-".to_owned()
    } else {
        source.alpn.join(",")
    };
    [
        source.address.to_string(),
        source.kind.as_str().to_owned(),
        source.verdict.as_str().to_owned(),
        source.connections.to_string(),
        seen(source.first_seen_unix),
        seen(source.last_seen_unix),
        source.sni.clone().unwrap_or_else(|| "-".to_owned()),
        alpn,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::strict_fate::{AuditKind, StrictVerdict};

    fn source(address: &str, kind: AuditKind, verdict: StrictVerdict, connections: u64) -> SourceReport {
        SourceReport {
            address: address.parse().unwrap(),
            kind,
            verdict,
            sni: (kind == AuditKind::Tls).then(|| "echo.demo.svc.cluster.local".to_owned()),
            alpn: if kind == AuditKind::Tls {
                vec!["h2".into(), "http/1.1".into()]
            } else {
                Vec::new()
            },
            connections,
            first_seen_unix: 1_796_000_000,
            last_seen_unix: 1_796_000_060,
        }
    }

    fn report() -> AuditReport {
        AuditReport {
            since_unix: 1_796_000_000,
            max_sources_per_port: 256,
            max_ports: 128,
            untracked_connections: 0,
            ports: vec![
                PortReport {
                    port: 8080,
                    mode: MtlsMode::Permissive,
                    connections: 8,
                    pass: 2,
                    refuse: 4,
                    unknown: 2,
                    evicted_sources: 3,
                    sources: vec![
                        source("127.0.0.3", AuditKind::Plaintext, StrictVerdict::Refuse, 3),
                        source("127.0.0.4", AuditKind::Plaintext, StrictVerdict::Refuse, 1),
                        source("127.0.0.2", AuditKind::Tls, StrictVerdict::Unknown, 2),
                    ],
                },
                PortReport {
                    port: 9090,
                    mode: MtlsMode::Strict,
                    connections: 1,
                    pass: 1,
                    refuse: 0,
                    unknown: 0,
                    evicted_sources: 0,
                    sources: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn a_person_reads_the_share_refused_and_the_sources_to_fix_first() {
        let out = text(&report(), 2);
        let expected = "\
STRICT audit since 2026-11-30T00:53:20Z: what each PERMISSIVE and DISABLE port's connections would meet under STRICT.

PORT     MODE           CONNECTIONS     WOULD PASS     WOULD BE REFUSED     UNKNOWN
8080     PERMISSIVE     8               2              4 (50.0%)            2 (25.0%)
9090     STRICT         1               1              0 (0.0%)             0 (0.0%)

Port 8080 (PERMISSIVE), sources to fix first:
  SOURCE        KIND          VERDICT     CONNECTIONS     FIRST SEEN               LAST SEEN                SNI     ALPN
  127.0.0.3     plaintext     refuse      3               2026-11-30T00:53:20Z     2026-11-30T00:54:20Z     -       -
  127.0.0.4     plaintext     refuse      1               2026-11-30T00:53:20Z     2026-11-30T00:54:20Z     -       -
  ... and 1 more (--top 0 lists them all).
  3 sources were dropped to make room: the table keeps the 256 most recently seen.

Port 9090 (STRICT now; what follows came before the switch): every connection seen would pass under STRICT.

unknown: TLS that peerguard passed through untouched (the app's own TLS, or any TLS on a DISABLE port). STRICT terminates it and lets it pass only if the client presents a mesh certificate.
";
        assert_eq!(out, expected, "\n{out}");
        let all = text(&report(), 0);
        assert!(
            all.contains("127.0.0.2     tls           unknown     2 ")
                && all.contains("echo.demo.svc.cluster.local     h2,http/1.1"),
            "{all}"
        );
    }

    #[test]
    fn an_empty_audit_says_so() {
        let empty = AuditReport {
            ports: Vec::new(),
            ..report()
        };
        assert!(text(&empty, 10).ends_with("No connection on a PERMISSIVE or DISABLE port yet.\n"));
    }

    /// A server at a fresh loopback port that answers one request with `answer`.
    fn answering(answer: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request);
            stream.write_all(answer.as_bytes()).unwrap();
        });
        addr
    }

    #[test]
    fn another_server_or_an_older_peerguard_is_told_apart() {
        let older = answering("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        let error = format!("{:#}", fetch(older).unwrap_err());
        assert!(error.contains("is not served here"), "{error}");
        let broken = answering("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops\n");
        let error = format!("{:#}", fetch(broken).unwrap_err());
        assert!(error.ends_with("answered 500: oops"), "{error}");
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(fetch(ok).unwrap(), "{}");
    }

    #[test]
    fn an_address_where_nothing_listens_is_reported_with_the_flag_to_fix() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = format!("{:#}", fetch(addr).unwrap_err());
        assert!(error.contains(&format!("--admin {addr}")), "{error}");
    }
}
