//! Readiness (docs/operating.md#ports-and-endpoints): ready only while a policy is loaded, the
//! workload certificate in use is unexpired, every listener is bound, and the proxy is not
//! draining.
//!
//! With files the policy condition holds by construction: `start` fails without a valid policy,
//! and a failed reload keeps the last good one. With the Kubernetes source readiness waits for
//! the first complete list (generation 1), and says which resources it still waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::app_probe;
use super::server::{not_found, text, Answer, Routes};
use crate::config::AppProbes;
use crate::store::{SourceStatus, Store};
use crate::tls::identity::Rfc3339;

/// The readiness probe's path, as Istio's sidecar serves it on 15021.
pub const READY_PATH: &str = "/healthz/ready";

/// Why the proxy is not ready; the health endpoint's 503 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("listeners are not bound yet")]
    Starting,
    #[error("no policy in force yet: {0}")]
    AwaitingPolicy(String),
    #[error("the workload certificate (serial {serial}) expired at {not_after}")]
    CertificateExpired { serial: String, not_after: String },
    #[error("draining: the proxy is shutting down")]
    Draining,
}

/// What readiness is computed from: how far start-up and shutdown have got, and the live
/// credentials.
pub struct Readiness {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    store: Arc<Store>,
}

impl Readiness {
    pub fn new(store: Arc<Store>) -> Self {
        Readiness {
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            store,
        }
    }

    pub fn listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::SeqCst);
    }

    /// Shutting down: not ready from now on.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready at `now`, else the first reason not to be.
    pub fn check(&self, now: SystemTime) -> Result<(), NotReady> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(NotReady::Draining);
        }
        if !self.listeners_bound.load(Ordering::SeqCst) {
            return Err(NotReady::Starting);
        }
        if self.store.policy().generation == 0 {
            let why = match self.store.source_status() {
                SourceStatus::Kubernetes(cluster) => cluster.waiting_for(),
                SourceStatus::Files { .. } => "loading the policy files".to_string(),
            };
            return Err(NotReady::AwaitingPolicy(why));
        }
        let tls = self.store.tls();
        if tls.is_expired(now) {
            return Err(NotReady::CertificateExpired {
                serial: tls.serial.clone(),
                not_after: Rfc3339(tls.not_after).to_string(),
            });
        }
        Ok(())
    }
}

/// `200 ready`, or `503` with the reason: the answer of `/healthz/ready` and admin `/ready`.
pub fn ready_response(readiness: &Readiness) -> Response<Full<Bytes>> {
    match readiness.check(SystemTime::now()) {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// The health endpoint's routes (`--health`): the readiness probe, and the app's own probes
/// as Istio rewrites them (`/app-health/<container>/<livez|readyz|startupz>`).
pub fn routes(readiness: Arc<Readiness>, probes: Arc<AppProbes>) -> Routes {
    Arc::new(move |path| match path {
        READY_PATH => ready_response(&readiness).into(),
        path => match probes.get(path) {
            Some(probe) => {
                let probe = probe.clone();
                Answer::Later(Box::pin(async move {
                    match app_probe::run(&probe).await {
                        Ok(()) => text(StatusCode::OK, "ok\n".into()),
                        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("app probe failed: {why}\n")),
                    }
                }))
            }
            None => not_found(path).into(),
        },
    })
}
