//! Prometheus metrics (docs/operating.md#metrics), served by the admin endpoint at
//! `/stats/prometheus`.
//!
//! Label sets are closed and bounded: `mode`, `action` and `reason` take the same `as_str()`
//! values as the access log, and `port` is the workload port, which is bounded by the app's
//! ports. In transparent mode iptables may redirect any port, so a port scan could otherwise
//! mint a series per port: past [`MAX_PORT_LABELS`] distinct ports, further ports share the
//! label `port="other"`.
//!
//! The per-connection cost is one hash lookup of a `Copy` label set (no formatting, no
//! allocation once the series exists) and a few atomic adds on handles resolved at start-up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::config::CertOrigin;
use crate::outcome::record::Record;
use crate::policy::authorization::{Decider, Verdict};
use crate::policy::MtlsMode;
use crate::tls::sessions::Declined;

/// Most distinct workload ports that get their own `port` label value.
pub const MAX_PORT_LABELS: usize = 128;

/// The `port` label: a workload port, or `other` once [`MAX_PORT_LABELS`] are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PortLabel {
    Port(u16),
    Other,
}

impl EncodeLabelValue for PortLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            PortLabel::Port(port) => EncodeLabelValue::encode(port, encoder),
            PortLabel::Other => EncodeLabelValue::encode(&"other", encoder),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    port: PortLabel,
    mode: &'static str,
    action: &'static str,
    reason: &'static str,
}

/// The STRICT audit's labels (docs/strict-audit.md): bounded like the connection labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StrictAuditLabels {
    port: PortLabel,
    verdict: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthorizationLabels {
    decision: &'static str,
    policy: PolicyLabel,
}

/// The `policy` label: `namespace/name` of the deciding policy, `none` when no policy decided,
/// `other` past [`MAX_POLICY_LABELS`] distinct policies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PolicyLabel {
    Policy(Arc<str>),
    None,
    Other,
}

impl EncodeLabelValue for PolicyLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let text: &str = match self {
            PolicyLabel::Policy(policy) => policy,
            PolicyLabel::None => "none",
            PolicyLabel::Other => "other",
        };
        EncodeLabelValue::encode(&text, encoder)
    }
}

/// Most distinct policies that get their own `policy` label value: policies come from the
/// cluster's operators, not from clients, but a label set must stay bounded all the same.
pub const MAX_POLICY_LABELS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeclinedLabels {
    reason: &'static str,
}

/// The certificate in use: one series, replaced at each new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertificateLabels {
    /// `file` or `mesh_ca`.
    source: &'static str,
    /// The file path(s) or the CA address.
    origin: String,
    serial: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Ok and failed counters of one kind of reload, resolved once.
struct ReloadCounters {
    ok: Counter,
    failed: Counter,
}

impl ReloadCounters {
    fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<ResultLabels, Counter>::default();
        registry.register(name, help, family.clone());
        ReloadCounters {
            ok: family.get_or_create_owned(&ResultLabels { result: "ok" }),
            failed: family.get_or_create_owned(&ResultLabels { result: "failed" }),
        }
    }
}

/// Which workload ports have a label of their own: a lock-free bitset over all 65536 ports.
struct PortLabels {
    seen: Box<[AtomicU64]>,
    count: AtomicUsize,
}

impl PortLabels {
    fn new() -> Self {
        PortLabels {
            seen: (0..(1 << 16) / 64).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
        }
    }

    fn label(&self, port: u16) -> PortLabel {
        let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
        if self.seen[word].load(Ordering::Relaxed) & bit != 0 {
            return PortLabel::Port(port);
        }
        // Claim a slot first so that racing new ports can never exceed the bound.
        if self.count.fetch_add(1, Ordering::Relaxed) >= MAX_PORT_LABELS {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return PortLabel::Other;
        }
        if self.seen[word].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            // Another connection labelled this port meanwhile; give the slot back.
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        PortLabel::Port(port)
    }
}

/// Every metric family of the process, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    ports: PortLabels,
    connections: Family<ConnectionLabels, Counter>,
    strict_audit: Family<StrictAuditLabels, Counter>,
    strict_audit_evicted: Counter,
    active_connections: Gauge,
    bytes_to_app: Counter,
    bytes_to_client: Counter,
    client_hello_bytes: Histogram,
    sniff_seconds: Histogram,
    handshake_seconds: Histogram,
    full_handshakes: Counter,
    resumed_handshakes: Counter,
    resumptions_declined: Family<DeclinedLabels, Counter>,
    authorizations: Family<AuthorizationLabels, Counter>,
    labelled_policies: Mutex<HashSet<Arc<str>>>,
    policy_reloads: ReloadCounters,
    policy_generation: Gauge,
    certificate_reloads: ReloadCounters,
    certificate_expiry: Gauge,
    certificate_info: Family<CertificateLabels, Gauge>,
    certificate_renewals: ReloadCounters,
    certificate_next_renewal: Gauge,
    kubernetes: KubernetesCounters,
}

/// The Kubernetes policy source (docs/kubernetes.md#metrics); zero with the file source.
struct KubernetesCounters {
    invalid_objects: Counter,
    outages: Counter,
    reachable: Gauge,
    relists: Counter,
}

impl KubernetesCounters {
    fn register(registry: &mut Registry) -> Self {
        let counters = KubernetesCounters {
            invalid_objects: Counter::default(),
            outages: Counter::default(),
            reachable: Gauge::default(),
            relists: Counter::default(),
        };
        registry.register(
            "kubernetes_invalid_objects",
            "Objects from the Kubernetes API skipped as invalid (each version counted once); the rest applies",
            counters.invalid_objects.clone(),
        );
        registry.register(
            "kubernetes_api_outages",
            "Times the Kubernetes API server became unreachable; the last good policy stays in force meanwhile",
            counters.outages.clone(),
        );
        registry.register(
            "kubernetes_api_reachable",
            "1 while the Kubernetes API server answers, 0 during an outage",
            counters.reachable.clone(),
        );
        registry.register(
            "kubernetes_relists",
            "Watches that had to list again because their resourceVersion was too old (410 Gone)",
            counters.relists.clone(),
        );
        counters
    }
}

/// Decrements the active-connections gauge when the connection's task lets go of it, however
/// the task ends.
pub struct ActiveConnection<'a>(&'a Gauge);

impl Drop for ActiveConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerguard");
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections ended, by workload port, mTLS mode, action and reason",
            connections.clone(),
        );
        let strict_audit = Family::<StrictAuditLabels, Counter>::default();
        registry.register(
            "strict_audit",
            "Connections on PERMISSIVE and DISABLE ports by what STRICT would have done (pass, refuse, unknown), by workload port and by what the client sent",
            strict_audit.clone(),
        );
        let strict_audit_evicted = Counter::default();
        registry.register(
            "strict_audit_evicted_sources",
            "Sources dropped from a full STRICT audit table (the least recently seen of the port) to make room for a new one",
            strict_audit_evicted.clone(),
        );
        let active_connections = Gauge::default();
        registry.register("active_connections", "Connections open now", active_connections.clone());
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "transferred",
            "Bytes forwarded, by direction (to_app, to_client)",
            Unit::Bytes,
            bytes.clone(),
        );
        let client_hello_bytes = Histogram::new(exponential_buckets(256.0, 2.0, 8));
        registry.register_with_unit(
            "client_hello_size",
            "Size of the ClientHellos read while classifying",
            Unit::Bytes,
            client_hello_bytes.clone(),
        );
        let sniff_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        registry.register_with_unit(
            "sniff_time",
            "Time spent waiting for and reading a connection's first bytes",
            Unit::Seconds,
            sniff_seconds.clone(),
        );
        let handshake_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register_with_unit(
            "handshake_time",
            "Time taken by completed mTLS handshakes",
            Unit::Seconds,
            handshake_seconds.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "Completed mTLS handshakes, by kind (full, or resumed from an earlier session)",
            handshakes.clone(),
        );
        let resumptions_declined = Family::<DeclinedLabels, Counter>::default();
        registry.register(
            "tls_resumptions_declined",
            "Resumptions refused (a full handshake followed), by reason (certificate_expired, session_lifetime)",
            resumptions_declined.clone(),
        );
        // Both series exist from the start, so a dashboard sees 0 rather than nothing.
        for declined in Declined::ALL {
            let _ = resumptions_declined.get_or_create(&DeclinedLabels {
                reason: declined.as_str(),
            });
        }
        let authorizations = Family::<AuthorizationLabels, Counter>::default();
        registry.register(
            "authorizations",
            "AuthorizationPolicy verdicts, by decision (allow, deny, and shadow_deny for what a dry-run policy would have denied) and deciding policy",
            authorizations.clone(),
        );
        let policy_reloads = ReloadCounters::register(&mut registry, "policy_reloads", "Policy reloads, by result");
        let policy_generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Generation of the policy in force (1 at start, +1 per successful reload)",
            policy_generation.clone(),
        );
        let certificate_reloads = ReloadCounters::register(
            &mut registry,
            "certificate_reloads",
            "Certificate and root reloads, by result",
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the workload certificate in use, as a Unix time",
            certificate_expiry.clone(),
        );
        let certificate_info = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate",
            "The workload certificate in use (value 1): its source (file or mesh_ca), origin (paths or CA address) and serial",
            certificate_info.clone(),
        );
        let certificate_renewals = ReloadCounters::register(
            &mut registry,
            "certificate_renewals",
            "Renewals of the workload certificate from the mesh CA, by result (a refused chain is a failure)",
        );
        let certificate_next_renewal = Gauge::default();
        registry.register(
            "certificate_next_renewal_timestamp_seconds",
            "When the mesh CA is asked next (renewal or retry), as a Unix time",
            certificate_next_renewal.clone(),
        );
        let kubernetes = KubernetesCounters::register(&mut registry);
        Metrics {
            registry,
            ports: PortLabels::new(),
            connections,
            strict_audit,
            strict_audit_evicted,
            active_connections,
            bytes_to_app: bytes.get_or_create_owned(&DirectionLabels { direction: "to_app" }),
            bytes_to_client: bytes.get_or_create_owned(&DirectionLabels { direction: "to_client" }),
            client_hello_bytes,
            sniff_seconds,
            handshake_seconds,
            full_handshakes: handshakes.get_or_create_owned(&HandshakeLabels { kind: "full" }),
            resumed_handshakes: handshakes.get_or_create_owned(&HandshakeLabels { kind: "resumed" }),
            resumptions_declined,
            authorizations,
            labelled_policies: Mutex::default(),
            policy_reloads,
            policy_generation,
            certificate_reloads,
            certificate_expiry,
            certificate_info,
            certificate_renewals,
            certificate_next_renewal,
            kubernetes,
        }
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> ActiveConnection<'_> {
        self.active_connections.inc();
        ActiveConnection(&self.active_connections)
    }

    /// Counts one finished connection from its record, with the labels the access log uses.
    pub fn connection_ended(&self, record: &Record) {
        let port = self.ports.label(record.workload_port);
        let labels = ConnectionLabels {
            port,
            mode: record.mode.map_or("none", MtlsMode::as_str),
            action: record.action.as_str(),
            reason: record.reason.as_str(),
        };
        self.connections.get_or_create(&labels).inc();
        if let Some(fate) = record.strict_fate() {
            let labels = StrictAuditLabels {
                port,
                verdict: fate.verdict.as_str(),
                kind: fate.kind.as_str(),
            };
            self.strict_audit.get_or_create(&labels).inc();
        }
        self.bytes_to_app.inc_by(record.to_app);
        self.bytes_to_client.inc_by(record.to_client);
        if let Some(tls) = &record.tls {
            self.client_hello_bytes.observe(tls.client_hello_bytes as f64);
            if let Some(handshake) = tls.handshake_time {
                self.handshake_seconds.observe(handshake.as_secs_f64());
                if tls.resumed {
                    self.resumed_handshakes.inc();
                } else {
                    self.full_handshakes.inc();
                }
            }
            if let Some(declined) = tls.resumption_declined {
                let labels = DeclinedLabels {
                    reason: declined.as_str(),
                };
                self.resumptions_declined.get_or_create(&labels).inc();
            }
        }
        if let Some(sniff) = record.sniff_time {
            self.sniff_seconds.observe(sniff.as_secs_f64());
        }
        if let Some(verdict) = &record.authorization {
            self.authorized(verdict);
        }
    }

    /// Counts a verdict by its deciding policy, and what dry-run policies would have denied.
    fn authorized(&self, verdict: &Verdict) {
        let decision = if verdict.allowed { "allow" } else { "deny" };
        self.count_authorization(decision, verdict.decider.as_ref());
        for shadow in verdict.dry_run().filter(|shadow| !shadow.allowed) {
            self.count_authorization("shadow_deny", shadow.decider.as_ref());
        }
    }

    fn count_authorization(&self, decision: &'static str, decider: Option<&Decider>) {
        let policy = match decider {
            None => PolicyLabel::None,
            Some(decider) => self.policy_label(&decider.policy),
        };
        self.authorizations
            .get_or_create(&AuthorizationLabels { decision, policy })
            .inc();
    }

    /// The policy's own label while fewer than [`MAX_POLICY_LABELS`] have one, else `other`.
    fn policy_label(&self, policy: &Arc<str>) -> PolicyLabel {
        let mut labelled = self.labelled_policies.lock().unwrap_or_else(PoisonError::into_inner);
        if labelled.contains(policy) || labelled.len() < MAX_POLICY_LABELS {
            labelled.insert(policy.clone());
            PolicyLabel::Policy(policy.clone())
        } else {
            PolicyLabel::Other
        }
    }

    /// The counter the STRICT audit table adds its evictions to.
    pub fn strict_audit_evictions(&self) -> Counter {
        self.strict_audit_evicted.clone()
    }

    /// The policy generation in force, set at start and by every successful reload.
    pub fn policy_in_force(&self, generation: u64) {
        self.policy_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    pub fn policy_reloaded(&self, generation: u64) {
        self.policy_reloads.ok.inc();
        self.policy_in_force(generation);
    }

    pub fn policy_reload_failed(&self) {
        self.policy_reloads.failed.inc();
    }

    /// The certificate in use and its expiry, set at start and by every new certificate.
    pub fn certificate_in_force(&self, origin: &CertOrigin, serial: &str, not_after: SystemTime) {
        self.certificate_expiry.set(unix_gauge(not_after));
        self.certificate_info.clear();
        let labels = CertificateLabels {
            source: origin.kind,
            origin: origin.from.clone(),
            serial: serial.to_owned(),
        };
        self.certificate_info.get_or_create(&labels).set(1);
    }

    pub fn certificate_reloaded(&self) {
        self.certificate_reloads.ok.inc();
    }

    /// A renewal from the mesh CA succeeded or failed; the CA is asked next at `next_at`.
    pub fn certificate_renewed(&self, ok: bool, next_at: SystemTime) {
        if ok {
            self.certificate_renewals.ok.inc();
        } else {
            self.certificate_renewals.failed.inc();
        }
        self.certificate_renewal_due(next_at);
    }

    pub fn certificate_renewal_due(&self, at: SystemTime) {
        self.certificate_next_renewal.set(unix_gauge(at));
    }

    pub fn certificate_reload_failed(&self) {
        self.certificate_reloads.failed.inc();
    }

    /// An object from the Kubernetes API was skipped as invalid.
    pub fn kubernetes_invalid_object(&self) {
        self.kubernetes.invalid_objects.inc();
    }

    /// Whether the Kubernetes API server answers; a change to unreachable counts an outage.
    pub fn kubernetes_reachable(&self, reachable: bool) {
        if !reachable {
            self.kubernetes.outages.inc();
        }
        self.kubernetes.reachable.set(i64::from(reachable));
    }

    /// A watch lists again after 410 Gone.
    pub fn kubernetes_relisted(&self) {
        self.kubernetes.relists.inc();
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn unix_gauge(time: SystemTime) -> i64 {
    i64::try_from(crate::tls::identity::unix_seconds(time)).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_past_the_bound_share_the_other_label() {
        let metrics = Metrics::new();
        for i in 0..MAX_POLICY_LABELS {
            let policy: Arc<str> = format!("ns/p{i}").into();
            assert_eq!(metrics.policy_label(&policy), PolicyLabel::Policy(policy.clone()));
        }
        assert_eq!(metrics.policy_label(&"ns/late".into()), PolicyLabel::Other);
        let first: Arc<str> = "ns/p0".into();
        assert_eq!(metrics.policy_label(&first), PolicyLabel::Policy(first.clone()), "kept");
    }

    #[test]
    fn ports_past_the_bound_share_the_other_label() {
        let ports = PortLabels::new();
        for port in 1..=MAX_PORT_LABELS as u16 {
            assert_eq!(ports.label(port), PortLabel::Port(port));
        }
        assert_eq!(ports.label(60000), PortLabel::Other);
        assert_eq!(
            ports.label(1),
            PortLabel::Port(1),
            "a port labelled before keeps its label"
        );
    }
}
