//! The app protocol of a workload port
//! (docs/connections.md#which-alpn-a-terminated-connection-gets): what peerguard may select as
//! ALPN when it terminates mTLS, since it forwards bytes and cannot translate between
//! protocols.
//!
//! A port's protocol comes from `--app-protocol PORT=http1|http2|tcp` (first), else from the
//! Services that select the workload and map a port to it by `targetPort`, read as Istio reads
//! them (`ConvertProtocol` in istio's `pkg/config/kube/conversion.go`, `protocol.Parse` in
//! `pkg/config/protocol/instance.go`), else it is unknown.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::policy::error::{Concern, PolicyWarning};
use crate::policy::service::{Service, ServicePort};
use crate::policy::Workload;

/// What the app speaks on a port, as far as ALPN selection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppProtocol {
    /// HTTP/1.1 (or 1.0): `http/1.1` then `http/1.0` may be selected.
    Http1,
    /// HTTP/2 (gRPC included): `h2` may be selected.
    Http2,
    /// Declared, but not HTTP: the decrypted stream is opaque, so no ALPN is selected.
    Tcp,
    /// Nothing declares it.
    Unknown,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http1 => "http1",
            AppProtocol::Http2 => "http2",
            AppProtocol::Tcp => "tcp",
            AppProtocol::Unknown => "unknown",
        }
    }

    /// The protocol a Service port's `appProtocol` value or name declares, the way Istio reads
    /// it, reduced to what matters for ALPN; `None` when it declares nothing Istio knows.
    ///
    /// - `kubernetes.io/h2c` → Http2, `kubernetes.io/ws` → Http1 (WebSocket is an HTTP/1.1
    ///   upgrade), `kubernetes.io/wss` → Tcp (Istio: HTTPS). Exact, as Kubernetes defines them.
    /// - Otherwise case-insensitive: a `grpc-web` prefix → Http2 (Istio's IsHTTP2; its
    ///   upstream is gRPC over h2); else the part before the first `-`:
    ///   `http`, `http1`, `http_proxy` → Http1; `http2`, `grpc`, `h2c` → Http2;
    ///   `tcp`, `tls`, `https`, `mongo`, `mysql`, `redis` → Tcp. `https` and `tls` are Tcp
    ///   because the app speaks TLS itself inside the mesh's mTLS: what peerguard decrypts is
    ///   the app's TLS, not HTTP, so no HTTP ALPN fits.
    /// - `http1` and `h2c` are not in Istio's `protocol.Parse`; peerguard adds them
    ///   (docs/connections.md#which-alpn-a-terminated-connection-gets).
    /// - `udp` (and anything else) declares no TCP protocol peerguard could serve: `None`.
    pub(crate) fn declared_by(text: &str) -> Option<AppProtocol> {
        match text {
            "kubernetes.io/h2c" => return Some(AppProtocol::Http2),
            "kubernetes.io/ws" => return Some(AppProtocol::Http1),
            "kubernetes.io/wss" => return Some(AppProtocol::Tcp),
            _ => {}
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("grpc-web") {
            return Some(AppProtocol::Http2);
        }
        match lower.split('-').next().unwrap_or_default() {
            "http" | "http1" | "http_proxy" => Some(AppProtocol::Http1),
            "http2" | "grpc" | "h2c" => Some(AppProtocol::Http2),
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(AppProtocol::Tcp),
            _ => None,
        }
    }
}

impl fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ports whose protocol Istio takes as TCP when the Service does not say (SMTP, DNS, MySQL,
/// MongoDB): `wellKnownPorts` in istio's `conversion.go`, keyed by the Service port.
const WELL_KNOWN_TCP_PORTS: [u16; 4] = [25, 53, 3306, 27017];

/// A workload port's protocol and what declared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortProtocol {
    pub protocol: AppProtocol,
    /// `--app-protocol 8080=http2`, `Service foo/web port 80 (name http-web)`, ...; `None`
    /// when nothing declares it.
    pub source: Option<String>,
}

/// `--app-protocol PORT=PROTOCOL` flags, which beat any Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProtocolOverrides(BTreeMap<u16, AppProtocol>);

/// The same port given twice with different protocols.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--app-protocol names port {port} twice, as {first} and as {second}")]
pub struct ConflictingOverride {
    pub port: u16,
    pub first: AppProtocol,
    pub second: AppProtocol,
}

impl ProtocolOverrides {
    /// The flags as parsed, in order; repeating a port with the same protocol is harmless.
    pub fn new(flags: &[(u16, AppProtocol)]) -> Result<Self, ConflictingOverride> {
        let mut overrides = BTreeMap::new();
        for &(port, protocol) in flags {
            if let Some(first) = overrides.insert(port, protocol).filter(|first| *first != protocol) {
                return Err(ConflictingOverride {
                    port,
                    first,
                    second: protocol,
                });
            }
        }
        Ok(ProtocolOverrides(overrides))
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.keys().copied()
    }
}

/// Parses one `--app-protocol` value, `PORT=http1|http2|tcp` (clap's value parser).
pub fn parse_override(text: &str) -> Result<(u16, AppProtocol), String> {
    let (port, protocol) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected PORT=PROTOCOL, e.g. 8080=http2"))?;
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => return Err(format!("`{port}` is not a port number (1..65535)")),
    };
    let protocol = match protocol {
        "http1" => AppProtocol::Http1,
        "http2" => AppProtocol::Http2,
        "tcp" => AppProtocol::Tcp,
        other => return Err(format!("`{other}` is not an app protocol: use http1, http2 or tcp")),
    };
    Ok((port, protocol))
}

/// One Service port's declaration for a workload port.
struct Declaration<'a> {
    service: &'a Service,
    port: &'a ServicePort,
    protocol: AppProtocol,
    /// The field that declared it, `spec.ports[1].appProtocol`; the port entry itself for a
    /// well-known port.
    path: String,
    /// `appProtocol grpc`, `name http-web`, `well-known port 3306`.
    how: String,
}

impl Declaration<'_> {
    fn source(&self) -> String {
        format!(
            "Service {}/{} port {} ({})",
            self.service.meta.namespace, self.service.meta.name, self.port.port, self.how
        )
    }
}

/// What one Service port (`spec.ports[index]`) declares, as Istio reads it: `appProtocol` when
/// set (then the name is not consulted, even if Istio does not know the value), else the name;
/// a well-known TCP port when neither says anything Istio knows.
fn declaration<'a>(service: &'a Service, index: usize, port: &'a ServicePort) -> Option<Declaration<'a>> {
    let entry = format!("spec.ports[{index}]");
    let (field, text) = match (&port.app_protocol, &port.name) {
        (Some(value), _) => ("appProtocol", Some(value)),
        (None, name) => ("name", name.as_ref()),
    };
    let declared = text.and_then(|text| Some((AppProtocol::declared_by(text)?, text)));
    let (protocol, path, how) = match declared {
        Some((protocol, text)) => (protocol, format!("{entry}.{field}"), format!("{field} {text}")),
        None if WELL_KNOWN_TCP_PORTS.contains(&port.port) => {
            (AppProtocol::Tcp, entry, format!("well-known port {}", port.port))
        }
        None => return None,
    };
    Some(Declaration {
        service,
        port,
        protocol,
        path,
        how,
    })
}

/// Every declaration for `workload_port`, the one that holds first: Services that select the
/// workload oldest first (`creationTimestamp`, then name, as everywhere in the policy engine),
/// and within one Service the lower Service port first.
fn declarations<'a>(services: &'a [Service], workload: &Workload, workload_port: u16) -> Vec<Declaration<'a>> {
    let mut selecting: Vec<&Service> = services.iter().filter(|s| s.selects(workload)).collect();
    selecting.sort_by(|a, b| a.meta.precedence().cmp(&b.meta.precedence()));
    selecting
        .into_iter()
        .flat_map(|service| {
            let mut ports: Vec<(usize, &ServicePort)> = service
                .ports
                .iter()
                .enumerate()
                .filter(|(_, port)| port.target == Some(workload_port))
                .collect();
            ports.sort_by_key(|(_, port)| port.port);
            ports
                .into_iter()
                .filter_map(move |(index, port)| declaration(service, index, port))
        })
        .collect()
}

/// The protocol of one workload port: the flag, else the first Service declaration, else unknown.
pub(crate) fn resolve(
    services: &[Service],
    workload: &Workload,
    port: u16,
    overrides: &ProtocolOverrides,
) -> PortProtocol {
    if let Some(&protocol) = overrides.0.get(&port) {
        return PortProtocol {
            protocol,
            source: Some(format!("--app-protocol {port}={protocol}")),
        };
    }
    match declarations(services, workload, port).first() {
        Some(declared) => PortProtocol {
            protocol: declared.protocol,
            source: Some(declared.source()),
        },
        None => PortProtocol {
            protocol: AppProtocol::Unknown,
            source: None,
        },
    }
}

/// A warning for each Service port that declares a protocol for a workload port other than the
/// one that holds there.
pub(crate) fn conflicts(services: &[Service], workload: &Workload) -> Vec<PolicyWarning> {
    let mut targets: Vec<u16> = services
        .iter()
        .filter(|s| s.selects(workload))
        .flat_map(|s| s.ports.iter().filter_map(|p| p.target))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let mut warnings = Vec::new();
    for target in targets {
        let found = declarations(services, workload, target);
        let Some((holds, rest)) = found.split_first() else {
            continue;
        };
        for other in rest.iter().filter(|d| d.protocol != holds.protocol) {
            warnings.push(PolicyWarning {
                at: other.service.meta.origin.clone(),
                path: other.path.clone(),
                concern: Concern::ProtocolConflict {
                    workload_port: target,
                    declared: other.protocol,
                    holds: holds.protocol,
                    by: holds.source(),
                },
            });
        }
    }
    warnings
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
