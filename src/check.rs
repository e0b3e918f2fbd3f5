//! `peerguard check`: what the proxy would do on a workload's ports, and why
//! (docs/operating.md#commands).
//!
//! It resolves with the same `PolicySet::resolve` and decides with the same `decide` as the
//! proxy, so the report cannot drift from the behaviour.
//!
//! Text output is for pasting into a ticket. JSON output is `{"workload": {...}, "ports": [...]}`:
//! the workload the policy was resolved for, and one object per port, the last one for "all
//! other ports" (`port: null`):
//! `{"port", "mode", "source": {"kind", "namespace", "name", "level"} | null, "http_alpn",
//! "protocol": {"protocol": "http1"|"http2"|"tcp"|"unknown", "source": text | null},
//! "action", "reason", "negotiated_alpn"}`; `action` and `reason` are null unless a connection
//! is described, `negotiated_alpn` unless a described TLS connection is terminated and an ALPN
//! is selected (`tls::alpn::select`, as the proxy does).
//!
//! Who may connect (docs/authorization.md): with `--principal spiffe://...` or
//! `--plaintext` (and `--source-ip`, `--destination-ip`, `--sni`), each row also gets
//! `"authorization": {"verdict", "policy", "rule", "reason", "dry_run": [{"policy", "rule",
//! "verdict"}]}` from the same `Authorizer::verdict` the proxy will use. It is left out when no
//! peer is described, and for `--plaintext` alone when no AuthorizationPolicy is loaded, so
//! the answers above are unchanged.
//! Exit code 0 on success, 2 on an invalid policy or workload (warnings go to stderr).

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{CheckArgs, OutputFormat};
use crate::cluster::{list_once, ListError};
use crate::config::{workload_from, WorkloadError};
use crate::inbound::classify::Sniffed;
use crate::inbound::decide::{decide, Decision};
use crate::outcome::{Action, Reason};
use crate::policy::authorization::{ConnectionFacts, Verdict};
use crate::policy::{
    AppProtocol, ConflictingOverride, Loaded, MtlsMode, PolicyError, PolicyLevel, PolicySet, PolicySource, PortPolicy,
    PortProtocol, ProtocolOverrides, ResolvedPort, Workload,
};
use crate::tls::alpn;
use crate::tls::client_hello::ClientHello;

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("--port 0 is not a port (1..65535)")]
    PortZero,
    #[error(transparent)]
    AppProtocol(#[from] ConflictingOverride),
    #[error("--policy reads files: it cannot be combined with --policy-source kubernetes or --kubeconfig")]
    PolicyWithKubernetes,
    #[error("the Kubernetes API: {0}")]
    Cluster(#[from] ListError),
    #[error("cannot start the async runtime for the Kubernetes client: {0}")]
    Runtime(std::io::Error),
}

/// Runs `peerguard check` and maps the outcome to an exit code. With `--output json` an error
/// is also printed to stdout as JSON, so a script reading stdout never mistakes it for an answer.
pub fn run(args: &CheckArgs) -> ExitCode {
    let (result, workload) = match workload_from(&args.workload) {
        Ok(workload) => (report(args, &workload), Some(workload)),
        Err(error) => (Err(CheckError::Workload(error)), None),
    };
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            if args.output == OutputFormat::Json {
                println!("{:#}", error_json(&error, workload.as_ref()));
            }
            ExitCode::from(2)
        }
    }
}

/// `{"error": {"message", and for a policy error "file", "document", "item", "object",
/// "path"}, "workload": {...} | null}`: the workload is what the policy was resolved for, when
/// the command line named a valid one.
fn error_json(error: &CheckError, workload: Option<&Workload>) -> serde_json::Value {
    let mut detail = serde_json::json!({"message": error.to_string()});
    let at = match error {
        CheckError::Policy(PolicyError::Invalid { at, path, .. }) => {
            detail["path"] = path.as_str().into();
            Some(at)
        }
        CheckError::Policy(PolicyError::Duplicate { at, .. }) => Some(at),
        CheckError::Policy(PolicyError::Syntax { source_name, index, .. }) => {
            detail["file"] = source_name.as_str().into();
            detail["document"] = (*index).into();
            None
        }
        _ => None,
    };
    if let Some(at) = at {
        detail["file"] = at.source.as_str().into();
        detail["document"] = at.index.into();
        detail["item"] = at.item.into();
        detail["object"] = at.identity.as_deref().into();
    }
    serde_json::json!({"error": detail, "workload": workload})
}

/// One line of the answer: a port (or all other ports) and what a described connection gets.
#[derive(Debug, Serialize)]
struct PortReport {
    /// `None`: every port not listed.
    port: Option<u16>,
    mode: MtlsMode,
    source: Option<PolicySource>,
    http_alpn: bool,
    protocol: PortProtocol,
    action: Option<Action>,
    reason: Option<Reason>,
    /// The ALPN the server selects for a described TLS connection it terminates.
    negotiated_alpn: Option<String>,
    /// Only when a peer is described (`--principal` or `--plaintext`) and authorization is in
    /// play (an AuthorizationPolicy is loaded, or an authorization flag is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization: Option<AuthorizationReport>,
}

/// docs/authorization.md, `check`: `{"verdict", "policy", "rule", "reason", "dry_run": [{"policy",
/// "verdict"}]}`; `policy` and `rule` are null when no policy decided.
#[derive(Debug, Serialize)]
struct AuthorizationReport {
    verdict: &'static str,
    policy: Option<String>,
    rule: Option<usize>,
    reason: &'static str,
    dry_run: Vec<DryRunReport>,
}

/// One dry-run engine's would-be verdict; `policy` is the dry-run policy whose rule matched.
#[derive(Debug, Serialize)]
struct DryRunReport {
    policy: Option<String>,
    rule: Option<usize>,
    verdict: &'static str,
}

impl AuthorizationReport {
    fn of(verdict: &Verdict) -> Self {
        let word = |allowed: bool| if allowed { "allow" } else { "deny" };
        AuthorizationReport {
            verdict: word(verdict.allowed),
            policy: verdict.decider.as_ref().map(|d| d.policy.to_string()),
            rule: verdict.decider.as_ref().map(|d| d.rule),
            reason: verdict.reason.as_str(),
            dry_run: verdict
                .dry_run()
                .map(|shadow| DryRunReport {
                    policy: shadow.decider.as_ref().map(|d| d.policy.to_string()),
                    rule: shadow.decider.as_ref().map(|d| d.rule),
                    verdict: word(shadow.allowed),
                })
                .collect(),
        }
    }
}

/// Whether `check` answers who may connect: a peer is described, and either policies or flags
/// make authorization part of the question (so outputs without it stay as they were).
fn authorizing(args: &CheckArgs, set: &PolicySet) -> bool {
    let peer_described = args.principal.is_some() || args.plaintext;
    let flags =
        args.principal.is_some() || args.source_ip.is_some() || args.destination_ip.is_some() || args.sni.is_some();
    peer_described && (flags || set.has_authorization_policies())
}

/// The policy to answer from, and its name for the text output: the files, or one complete
/// list from the API server (the same resources and validation as `run --policy-source
/// kubernetes`; invalid objects are skipped and named, as the proxy skips them).
fn load(args: &CheckArgs, workload: &Workload) -> Result<(Loaded, String), CheckError> {
    if !args.source.kubernetes() {
        let loaded = Loaded::from_path(args.policy.as_deref())?;
        let name = match loaded.files.as_slice() {
            [] => "none (every port PERMISSIVE)".to_string(),
            files => files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        return Ok((loaded, name));
    }
    if args.policy.is_some() {
        return Err(CheckError::PolicyWithKubernetes);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CheckError::Runtime)?;
    let listed = runtime.block_on(list_once(args.source.kubeconfig.as_deref(), workload))?;
    for warning in &listed.warnings {
        eprintln!("warning: {warning}");
    }
    for invalid in &listed.invalid {
        eprintln!("warning: invalid object skipped (the proxy skips it too): {invalid}");
    }
    for resource in &listed.not_installed {
        eprintln!("note: the API server does not serve {resource} (CRD not installed): read as none");
    }
    let name = format!(
        "the Kubernetes API at {} ({} invalid objects skipped)",
        listed.api_server,
        listed.invalid.len()
    );
    Ok((listed.loaded, name))
}

fn report(args: &CheckArgs, workload: &Workload) -> Result<String, CheckError> {
    let (loaded, policy_name) = load(args, workload)?;
    for warning in loaded.warnings_for(workload) {
        eprintln!("warning: {warning}");
    }
    let overrides = ProtocolOverrides::new(&args.app_protocol)?;
    let connection = described_connection(args);
    let resolved = loaded.set.resolve_ports(workload, &overrides);
    let authorizer = authorizing(args, &loaded.set).then(|| loaded.set.authorizer(workload, &args.trust_domain));
    let ports: Vec<Option<u16>> = match args.port {
        Some(0) => return Err(CheckError::PortZero),
        Some(port) => vec![Some(port)],
        None => resolved
            .named
            .iter()
            .map(|named| Some(named.policy.port))
            .chain([None])
            .collect(),
    };
    let reports: Vec<PortReport> = ports
        .into_iter()
        .map(|port| {
            let ResolvedPort { policy, protocol } = match port {
                Some(port) => resolved.port(port),
                None => &resolved.other,
            }
            .clone();
            let PortPolicy {
                mode,
                source,
                http_alpn,
                ..
            } = policy;
            let decision = connection.as_ref().map(|sniffed| decide(mode, sniffed, http_alpn));
            let negotiated_alpn = match (decision, &connection) {
                (Some(decision), Some(Sniffed::Tls(hello))) if decision.action == Action::Terminate => {
                    alpn::select(&hello.alpn, protocol.protocol).map(|p| String::from_utf8_lossy(p).into_owned())
                }
                _ => None,
            };
            let authorization = authorizer.as_ref().map(|authorizer| {
                AuthorizationReport::of(&authorizer.verdict(&ConnectionFacts {
                    peer: args.principal.as_ref(),
                    source_ip: args.source_ip,
                    destination_ip: args.destination_ip,
                    port: port.unwrap_or(resolved.unnamed_port),
                    sni: args.sni.as_deref(),
                }))
            });
            PortReport {
                port,
                mode,
                source,
                http_alpn,
                protocol,
                action: decision.map(|d| d.action),
                reason: decision.map(|d| d.reason),
                negotiated_alpn,
                authorization,
            }
        })
        .collect();
    Ok(match args.output {
        OutputFormat::Json => {
            let answer = serde_json::json!({"workload": workload, "ports": reports});
            let mut json = serde_json::to_string_pretty(&answer).expect("a port report always serializes");
            json.push('\n');
            json
        }
        OutputFormat::Text => text(workload, &policy_name, args, connection.as_ref(), &reports),
    })
}

fn described_connection(args: &CheckArgs) -> Option<Sniffed> {
    if args.plaintext {
        return Some(Sniffed::Plaintext);
    }
    args.tls.then(|| {
        Sniffed::Tls(ClientHello {
            sni: None,
            alpn: args.alpn.iter().map(|alpn| alpn.as_bytes().to_vec()).collect(),
        })
    })
}

fn text(
    workload: &Workload,
    policy: &str,
    args: &CheckArgs,
    connection: Option<&Sniffed>,
    reports: &[PortReport],
) -> String {
    let mut out = String::new();
    let labels: Vec<String> = workload.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let labels = if labels.is_empty() {
        "(none)".to_string()
    } else {
        labels.join(",")
    };
    let _ = writeln!(
        out,
        "workload:   namespace {}, labels {labels}, root namespace {}",
        workload.namespace, workload.root_namespace
    );
    let _ = writeln!(out, "policy:     {policy}");
    if connection.is_some() {
        let _ = writeln!(out, "connection: {}", connection_in_words(args));
    }
    if reports.iter().any(|report| report.authorization.is_some()) {
        let _ = writeln!(out, "peer:       {}", peer_in_words(args));
    }
    for report in reports {
        let port = report
            .port
            .map_or("all other ports".to_string(), |p| format!("port {p}"));
        let _ = writeln!(out, "\n{port}: {}", report.mode.as_str());
        let set_by = match &report.source {
            Some(source) => format!("{source} ({}: {})", source.level.as_str(), level_in_words(source.level)),
            None if report.mode == MtlsMode::Disable => "no policy (the policy set is legacy, Istio 1.1-1.4, where \
                 a port no policy covers accepts plaintext only)"
                .to_string(),
            None => "no policy (PERMISSIVE is the default)".to_string(),
        };
        let _ = writeln!(out, "  set by:     {set_by}");
        let annotation = match (report.http_alpn, report.mode) {
            (true, _) => "on: http/1.0, http/1.1 and h2 also mark mesh peers",
            (false, MtlsMode::Permissive) => "off",
            (false, _) => "off (it acts on PERMISSIVE ports only)",
        };
        let _ = writeln!(out, "  http alpn:  {annotation}");
        let declared = match &report.protocol.source {
            Some(source) => format!("declared by {source}"),
            None => "no Service or --app-protocol declares it".to_string(),
        };
        let _ = writeln!(out, "  protocol:   {}: {declared}", report.protocol.protocol);
        if let (Some(action), Some(reason)) = (report.action, report.reason) {
            let why = why(Decision { action, reason }, report.mode, args);
            let _ = writeln!(out, "  action:     {} ({}): {why}", action.as_str(), reason.as_str());
            if action == Action::Terminate {
                let selected = alpn_in_words(report.negotiated_alpn.as_deref(), report.protocol.protocol);
                let _ = writeln!(out, "  alpn:       {selected}");
            }
        }
        if let Some(authorization) = &report.authorization {
            let _ = writeln!(out, "  authorized: {}", authorization_in_words(authorization));
            for shadow in &authorization.dry_run {
                let by = match (&shadow.policy, shadow.rule) {
                    (Some(policy), Some(rule)) => format!("AuthorizationPolicy {policy} rule {rule}"),
                    _ => "no dry-run rule matched".to_string(),
                };
                let _ = writeln!(out, "  dry run:    would {} ({by}), not enforced", shadow.verdict);
            }
        }
    }
    out
}

fn peer_in_words(args: &CheckArgs) -> String {
    let mut words = match &args.principal {
        Some(principal) => format!("mTLS, {principal}"),
        None => "no identity (plaintext or passed-through TLS)".to_string(),
    };
    for (name, value) in [
        ("source ip", args.source_ip.map(|ip| ip.to_string())),
        ("destination ip", args.destination_ip.map(|ip| ip.to_string())),
        ("sni", args.sni.clone()),
    ] {
        if let Some(value) = value {
            let _ = write!(words, ", {name} {value}");
        }
    }
    words
}

/// `allow: ...` / `deny: ...` with the deciding policy and rule, or why none decided.
fn authorization_in_words(report: &AuthorizationReport) -> String {
    let why = match (&report.policy, report.rule, report.reason) {
        (Some(policy), Some(rule), _) => format!("AuthorizationPolicy {policy} rule {rule}"),
        (_, _, "no_allow_policy") => "no ALLOW policy applies, and no DENY matched".to_string(),
        (_, _, "no_allow_matched") => "ALLOW policies apply and none of their rules matched".to_string(),
        (_, _, reason) => reason.to_string(),
    };
    format!("{} ({}): {why}", report.verdict, report.reason)
}

fn connection_in_words(args: &CheckArgs) -> String {
    match (args.plaintext, args.alpn.as_slice()) {
        (true, _) => "plaintext".to_string(),
        (false, []) => "TLS, no ALPN offered".to_string(),
        (false, alpns) => format!("TLS, ALPN offered: {}", alpns.join(", ")),
    }
}

/// The ALPN a terminated connection gets, and why
/// (docs/connections.md#which-alpn-a-terminated-connection-gets).
fn alpn_in_words(selected: Option<&str>, protocol: AppProtocol) -> String {
    match (selected, protocol) {
        (Some(alpn), AppProtocol::Unknown) => format!(
            "{alpn} (the app's protocol is unknown: http/1.1, then http/1.0, go before h2, which is selected only \
             when the client offers nothing else)"
        ),
        (Some(alpn), _) => format!("{alpn} (what the app speaks on this port)"),
        (None, AppProtocol::Tcp) => {
            "none (the app's protocol is not HTTP, so no ALPN is selected; the handshake goes on)".to_string()
        }
        (None, _) => "none (the client offers nothing the app speaks; the handshake goes on without ALPN)".to_string(),
    }
}

fn level_in_words(level: PolicyLevel) -> &'static str {
    match level {
        PolicyLevel::Mesh => "mesh-wide policy in the root namespace",
        PolicyLevel::Namespace => "namespace-wide policy",
        PolicyLevel::Workload => "policy selecting this workload",
        PolicyLevel::Port => "portLevelMtls entry for this port",
        PolicyLevel::LegacyMesh => "legacy mesh-wide policy",
        PolicyLevel::LegacyNamespace => "legacy namespace-wide policy",
        PolicyLevel::LegacyService => "legacy policy targeting a Service of this workload",
        PolicyLevel::ServiceAnnotation => "Istio 0.3 auth.istio.io annotation on a Service of this workload",
    }
}

/// The decision in an operator's words. `check` describes plaintext or a whole ClientHello, so
/// only the reasons `decide` gives for those are worded; any other shows its label.
fn why(decision: Decision, mode: MtlsMode, args: &CheckArgs) -> String {
    let offers_http_alpn = args
        .alpn
        .iter()
        .any(|a| ["http/1.0", "http/1.1", "h2"].contains(&a.as_str()));
    match decision.reason {
        Reason::Mtls if mode == MtlsMode::Strict => {
            "STRICT: every TLS client must complete mTLS with a mesh certificate".to_string()
        }
        Reason::Mtls => "a mesh ALPN is offered, so peerguard terminates mTLS".to_string(),
        Reason::PassthroughTls if offers_http_alpn => "no mesh ALPN is offered (http/1.0, http/1.1 and h2 count only \
             with the http-alpns.aspenmesh.io annotation), so this is the app's own TLS, passed through untouched"
            .to_string(),
        Reason::PassthroughTls => {
            "no mesh ALPN is offered, so this is the app's own TLS, passed through untouched".to_string()
        }
        Reason::PassthroughPlaintext => "PERMISSIVE: plaintext goes to the app untouched".to_string(),
        Reason::PassthroughDisabled => "DISABLE: forwarded untouched without reading a byte".to_string(),
        Reason::PlaintextOnStrict => "STRICT: plaintext is refused with a TCP close (curl exits 56)".to_string(),
        other => other.as_str().to_string(),
    }
}
