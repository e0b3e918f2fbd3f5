//! `peerguard tls-check`: for a client namespace and Service ports, which DestinationRule sets
//! the client's TLS, which policy sets the server's mode, and whether they agree
//! (docs/tls-check.md). A thin face over `PolicySet::tls_check`, whose server side is the same
//! `PolicySet::resolve` that `check` and the proxy use.
//!
//! Text output is istioctl's `authn tls-check` table; JSON is a list of objects with `host`,
//! `port`, `status`, `server`, `client`, `authn_policy`, `destination_rule` (`-` for none, as
//! in the table), plus `explain` with `--explain`. Exit code 0 on success, 2 on an invalid
//! policy or a HOST[:PORT] that no Service has (warnings go to stderr).

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{OutputFormat, TlsCheckArgs};
use crate::policy::destination_rule::{ClientRule, Pool, TlsPair, TlsQuery, UnknownServicePort};
use crate::policy::{PolicyError, PolicySet, PolicySource};

#[derive(Debug, thiserror::Error)]
enum TlsCheckError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Unknown(#[from] UnknownServicePort),
    #[error("{0:?} is not HOST or HOST:PORT with a port in 1..65535")]
    Target(String),
}

/// What `istioctl` printed for "none".
const NONE: &str = "-";

pub fn run(args: &TlsCheckArgs) -> ExitCode {
    match report(args) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

fn report(args: &TlsCheckArgs) -> Result<String, TlsCheckError> {
    let (host, port) = match &args.target {
        Some(target) => {
            let (host, port) = split_target(target).ok_or_else(|| TlsCheckError::Target(target.clone()))?;
            (Some(host), port)
        }
        None => (None, None),
    };
    let loaded = PolicySet::load(&args.policy)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let pairs = loaded.set.tls_check(&TlsQuery {
        client_namespace: args.client_namespace.clone(),
        root_namespace: args.root_namespace.clone(),
        auto_mtls: args.auto_mtls,
        host,
        port,
    })?;
    let rows: Vec<Row> = pairs.iter().map(|pair| Row::of(pair, args)).collect();
    Ok(match args.output {
        OutputFormat::Json => {
            let mut json = serde_json::to_string_pretty(&rows).expect("a row always serializes");
            json.push('\n');
            json
        }
        OutputFormat::Text => text(&rows),
    })
}

/// `HOST` or `HOST:PORT`.
fn split_target(target: &str) -> Option<(String, Option<u16>)> {
    match target.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(crate::policy::parse_port(port)?))),
        None => Some((target.to_string(), None)),
    }
}

/// One Service port as printed.
#[derive(Debug, Serialize)]
struct Row {
    host: String,
    port: u16,
    status: &'static str,
    server: &'static str,
    client: &'static str,
    authn_policy: String,
    destination_rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<Explanation>,
}

/// Why, in words: which policy and workload port on the server side, which pool, host and
/// port entry on the client side.
#[derive(Debug, Serialize)]
struct Explanation {
    server: String,
    client: String,
}

impl Row {
    fn of(pair: &TlsPair, args: &TlsCheckArgs) -> Self {
        let client = pair.client.as_ref();
        Row {
            host: pair.host.clone(),
            port: pair.port,
            status: pair.status.as_str(),
            server: pair.server.mode.as_str(),
            client: client.and_then(|c| c.tls).map_or(NONE, |tls| tls.as_str()),
            authn_policy: pair.server.source.as_ref().map_or(NONE.to_string(), policy_name),
            destination_rule: client.map_or(NONE.to_string(), |c| c.named.clone()),
            explain: args.explain.then(|| Explanation {
                server: server_in_words(pair),
                client: client_in_words(client, args),
            }),
        }
    }
}

/// istioctl's `namespace/name`; the cluster-scoped MeshPolicy is `/default`.
fn policy_name(source: &PolicySource) -> String {
    format!("{}/{}", source.namespace, source.name)
}

fn server_in_words(pair: &TlsPair) -> String {
    let port = match pair.target {
        Some(target) => format!("workload port {target} (the Service port's targetPort)"),
        None => "a workload port no policy names (the targetPort is named, which only the pod spec maps)".to_string(),
    };
    let by = match &pair.server.source {
        Some(source) => format!("set by {source} ({})", source.level.as_str()),
        None if pair.server.mode == crate::policy::MtlsMode::Disable => {
            "no policy covers it in a legacy (Istio 1.1-1.4) policy set, where that means plaintext only".to_string()
        }
        None => "no policy sets it: PERMISSIVE is the default".to_string(),
    };
    format!("{} on {port}: {by}", pair.server.mode.as_str())
}

fn client_in_words(client: Option<&ClientRule>, args: &TlsCheckArgs) -> String {
    let unset = if args.auto_mtls {
        "auto mTLS picks what the server accepts"
    } else {
        "the client sends plaintext, judged as DISABLE (auto mTLS is off)"
    };
    let Some(rule) = client else {
        return format!(
            "no DestinationRule host matches in the client's namespace ({}), the Service's namespace or the root \
             namespace ({}): {unset}",
            args.client_namespace, args.root_namespace
        );
    };
    let pool = match rule.pool {
        Pool::ClientNamespace => format!("the client's namespace ({})", args.client_namespace),
        Pool::ServiceNamespace => "the rules the Service's namespace exports".to_string(),
        Pool::RootNamespace => format!("the rules the root namespace ({}) exports", args.root_namespace),
    };
    let mut words = format!("DestinationRule {} found in {pool} for host {}", rule.named, rule.host);
    if let Some(from) = rule.policy_from.as_ref().filter(|from| **from != rule.named) {
        let _ = write!(
            words,
            ", with the trafficPolicy of {from} (the oldest rule for the host that has one)"
        );
    }
    let tls = rule.tls.map_or(String::new(), |tls| format!(": {}", tls.as_str()));
    match (rule.port_entry, rule.tls) {
        (Some(index), _) => {
            let _ = write!(words, "; portLevelSettings[{index}] replaces the top-level tls{tls}");
        }
        (None, Some(_)) => {
            let _ = write!(words, "; the top-level tls{tls}");
        }
        (None, None) => {}
    }
    if rule.tls.is_none() {
        let _ = write!(words, "; it sets no TLS on this port, so {unset}");
    }
    words
}

/// The table as istioctl's tabwriter laid it out: every column but the last padded to its
/// widest cell plus 5 spaces.
fn text(rows: &[Row]) -> String {
    let header = [
        "HOST:PORT",
        "STATUS",
        "SERVER",
        "CLIENT",
        "AUTHN POLICY",
        "DESTINATION RULE",
    ]
    .map(String::from);
    let cells: Vec<[String; 6]> = std::iter::once(header)
        .chain(rows.iter().map(|row| {
            [
                format!("{}:{}", row.host, row.port),
                row.status.to_string(),
                row.server.to_string(),
                row.client.to_string(),
                row.authn_policy.clone(),
                row.destination_rule.clone(),
            ]
        }))
        .collect();
    let mut out = crate::columns::render(&cells);
    let explained = rows.iter().filter_map(|row| row.explain.as_ref().map(|e| (row, e)));
    for (row, explanation) in explained {
        let _ = write!(
            out,
            "\n{}:{}\n  server: {}\n  client: {}\n",
            row.host, row.port, explanation.server, explanation.client
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, status: &'static str, client: &'static str, authn: &str, rule: &str) -> Row {
        Row {
            host: host.to_string(),
            port: 8000,
            status,
            server: "STRICT",
            client,
            authn_policy: authn.to_string(),
            destination_rule: rule.to_string(),
            explain: None,
        }
    }

    #[test]
    fn the_table_pads_every_column_but_the_last_to_its_widest_cell_plus_five_spaces() {
        let rows = [
            row("foo.bar.svc.cluster.local", "CONFLICT", "-", "/default", "-"),
            row(
                "a.b.svc.cluster.local",
                "OK",
                "ISTIO_MUTUAL",
                "bar/default",
                "istio-system/default",
            ),
        ];
        assert_eq!(
            text(&rows),
            "HOST:PORT                          STATUS       SERVER     CLIENT           AUTHN POLICY     DESTINATION RULE\n\
             foo.bar.svc.cluster.local:8000     CONFLICT     STRICT     -                /default         -\n\
             a.b.svc.cluster.local:8000         OK           STRICT     ISTIO_MUTUAL     bar/default      istio-system/default\n"
        );
    }

    #[test]
    fn a_target_is_a_host_with_an_optional_port() {
        assert_eq!(
            split_target("a.b.svc.cluster.local"),
            Some(("a.b.svc.cluster.local".into(), None))
        );
        assert_eq!(
            split_target("a.b.svc.cluster.local:8000"),
            Some(("a.b.svc.cluster.local".into(), Some(8000)))
        );
        assert_eq!(split_target("a.b.svc.cluster.local:0"), None);
        assert_eq!(split_target("a.b.svc.cluster.local:http"), None);
    }
}
