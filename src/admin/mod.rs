//! The admin endpoint (`--admin`, loopback only), the health endpoint, and the HTTP plumbing
//! they share:
//! - `server`: a small, bounded HTTP/1.1 server of synchronous routes.
//! - `config_dump`: the `/config_dump` JSON document.
//! - `health`: readiness, and the health endpoint's routes (the app's rewritten probes too).
//! - `app_probe`: running one of those probes against the app.
//!
//! Routes: `/` (lists the others), `/config_dump`, `/strict_audit`, `/stats/prometheus`,
//! `/ready`.

mod app_probe;
pub mod config_dump;
pub mod health;
pub mod server;

use std::sync::Arc;
use std::time::SystemTime;

use hyper::StatusCode;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::strict_audit::StrictAudit;
use config_dump::{Addresses, CertificateStatus, ConfigDump};
use health::Readiness;
use server::Routes;

/// OpenMetrics text, as `prometheus_client` encodes it (Prometheus scrapes it natively).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /`: what a person who opens the admin address finds there.
const INDEX: &str = "peerguard admin endpoint\n\
    /config_dump        the workload, listeners, each port's mode and protocol, the certificate (JSON)\n\
    /strict_audit       what STRICT would do to the PERMISSIVE and DISABLE ports' connections (JSON)\n\
    /stats/prometheus   metrics (OpenMetrics text)\n\
    /ready              readiness: 200, or 503 with the reason\n";

/// What the admin endpoint reads; all of it shared with the data path, nothing copied.
pub struct Admin {
    pub addresses: Addresses,
    pub store: Arc<Store>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<StrictAudit>,
}

/// Where Prometheus scrapes, on the admin and on the metrics endpoint.
const METRICS_PATH: &str = "/stats/prometheus";

/// The metrics endpoint's routes (`--metrics`): the scrape, and nothing else, so that it can
/// face the network while the admin endpoint stays on loopback.
pub fn metrics_routes(metrics: Arc<Metrics>) -> Routes {
    Arc::new(move |path| match path {
        METRICS_PATH => scrape(&metrics).into(),
        other => server::not_found(other).into(),
    })
}

fn scrape(metrics: &Metrics) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    match metrics.encode() {
        Ok(text) => server::with_type(StatusCode::OK, OPENMETRICS, text),
        Err(e) => server::text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")),
    }
}

impl Admin {
    pub fn routes(self: Arc<Self>) -> Routes {
        Arc::new(move |path| match path {
            "/config_dump" => self.config_dump().into(),
            "/strict_audit" => self.strict_audit().into(),
            METRICS_PATH => scrape(&self.metrics).into(),
            "/ready" => health::ready_response(&self.readiness).into(),
            "/" => server::text(StatusCode::OK, INDEX.to_owned()).into(),
            other => server::not_found(other).into(),
        })
    }

    fn strict_audit(&self) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        let policy = self.store.policy();
        let report = self.audit.report(|port| policy.port(port).policy.mode);
        drop(policy);
        json(&report, "encoding the audit")
    }

    fn config_dump(&self) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        let now = SystemTime::now();
        let (policy, tls) = (self.store.policy(), self.store.tls());
        let status = CertificateStatus {
            origin: self.store.certificate_source().describe(),
            renewal: self.store.renewal(),
        };
        let source = self.store.source_status();
        let dump = ConfigDump::new(
            &self.addresses,
            &policy,
            source,
            &tls,
            status,
            self.readiness.check(now),
            now,
        );
        json(&dump, "encoding config")
    }
}

/// `value` as pretty JSON, or a 500 that says what failed.
fn json(value: &impl serde::Serialize, what: &str) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(json) => server::with_type(StatusCode::OK, "application/json", json + "\n"),
        Err(e) => server::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}\n")),
    }
}
