//! `/config_dump`: what this process is doing right now, as JSON. Built from the live
//! snapshots at request time, so it always shows the generation new connections get.

use crate::policy::authorization::PolicyInForce;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::CertOrigin;
use crate::policy::{MtlsMode, PolicySource, PortProtocol, Workload};
use crate::store::{PolicySnapshot, PortMode, Renewal, SourceStatus, TlsSnapshot};
use crate::tls::identity::unix_seconds;

/// One bound data-path listener.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerInfo {
    /// `transparent` (`--inbound`) or `explicit` (`--listen`).
    pub kind: &'static str,
    pub address: SocketAddr,
    /// The app address of an explicit listener; transparent ones use the original destination.
    pub app: Option<SocketAddr>,
}

/// The fixed parts of the dump: where this process listens.
#[derive(Debug, Clone, Serialize)]
pub struct Addresses {
    pub listeners: Vec<ListenerInfo>,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

#[derive(Serialize)]
pub struct ConfigDump<'a> {
    workload: &'a Workload,
    #[serde(flatten)]
    addresses: &'a Addresses,
    ready: Ready,
    policy: PolicyView<'a>,
    certificate: CertificateView<'a>,
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    /// Why not, when not.
    reason: Option<String>,
}

#[derive(Serialize)]
struct PolicyView<'a> {
    generation: u64,
    /// Where the policy comes from, and (for the Kubernetes API) how that source is doing now.
    source: SourceStatus,
    source_files: &'a [PathBuf],
    loaded_at_unix: u64,
    /// Every port a policy, Service or `--app-protocol` names, or an explicit listener serves.
    ports: Vec<PortView<'a>>,
    /// The mode of every port not listed.
    other_ports: PortView<'a>,
    /// The AuthorizationPolicies that apply to the workload, in evaluation order.
    authorization_policies: Vec<PolicyInForce>,
}

#[derive(Serialize)]
struct PortView<'a> {
    port: Option<u16>,
    mode: MtlsMode,
    /// `None`: no policy applies and the built-in default (PERMISSIVE) holds.
    source: Option<&'a PolicySource>,
    /// The `http-alpns.aspenmesh.io` annotation's effect on this port.
    http_alpn: bool,
    /// What the app speaks here and what declared it: decides the ALPN of terminated connections.
    protocol: &'a PortProtocol,
}

impl<'a> PortView<'a> {
    fn new(port: Option<u16>, mode: &'a PortMode) -> Self {
        PortView {
            port,
            mode: mode.policy.mode,
            source: mode.policy.source.as_ref(),
            http_alpn: mode.policy.http_alpn,
            protocol: &mode.protocol,
        }
    }
}

#[derive(Serialize)]
struct CertificateView<'a> {
    generation: u64,
    spiffe_id: Option<String>,
    serial: &'a str,
    not_after_unix: u64,
    expired: bool,
    source: SourceView,
    /// Renewals from the mesh CA; absent with a file source.
    #[serde(skip_serializing_if = "Option::is_none")]
    renewal: Option<RenewalView>,
}

#[derive(Serialize)]
struct SourceView {
    /// `file` or `mesh_ca`.
    kind: &'static str,
    /// The file path(s), or the CA's address.
    from: String,
}

#[derive(Serialize)]
struct RenewalView {
    /// When the CA is asked next: the renewal time, or the retry after a failure.
    next_at_unix: Option<u64>,
    ok: u64,
    failed: u64,
    last_error: Option<String>,
}

impl From<Renewal> for RenewalView {
    fn from(renewal: Renewal) -> Self {
        RenewalView {
            next_at_unix: renewal.next_at.map(unix_seconds),
            ok: renewal.ok,
            failed: renewal.failed,
            last_error: renewal.last_error,
        }
    }
}

/// Where the certificate in use comes from, and how its renewals go.
pub struct CertificateStatus {
    pub origin: CertOrigin,
    pub renewal: Option<Renewal>,
}

impl<'a> ConfigDump<'a> {
    pub fn new(
        addresses: &'a Addresses,
        policy: &'a PolicySnapshot,
        source: SourceStatus,
        tls: &'a TlsSnapshot,
        status: CertificateStatus,
        readiness: Result<(), super::health::NotReady>,
        now: SystemTime,
    ) -> Self {
        let (named, other) = policy.ports();
        let mut ports: Vec<u16> = named.iter().map(|m| m.policy.port).collect();
        ports.extend(addresses.listeners.iter().filter_map(|l| l.app.map(|a| a.port())));
        ports.sort_unstable();
        ports.dedup();
        ConfigDump {
            workload: &policy.workload,
            addresses,
            ready: Ready {
                ready: readiness.is_ok(),
                reason: readiness.err().map(|e| e.to_string()),
            },
            policy: PolicyView {
                generation: policy.generation,
                source,
                source_files: &policy.files,
                loaded_at_unix: unix_seconds(policy.loaded_at),
                ports: ports
                    .into_iter()
                    .map(|p| PortView::new(Some(p), policy.port(p)))
                    .collect(),
                other_ports: PortView::new(None, other),
                authorization_policies: policy.authorizer.policies().collect(),
            },
            certificate: CertificateView {
                generation: tls.generation,
                spiffe_id: tls.identity.as_ref().map(ToString::to_string),
                serial: &tls.serial,
                not_after_unix: unix_seconds(tls.not_after),
                expired: tls.is_expired(now),
                source: SourceView {
                    kind: status.origin.kind,
                    from: status.origin.from,
                },
                renewal: status.renewal.map(RenewalView::from),
            },
        }
    }
}
