//! The mesh CA as a certificate provider: the first certificate before the proxy serves
//! (retrying, bounded), then a renewal at the configured fraction of each certificate's
//! lifetime, retried with backoff while the certificate in use keeps serving. New certificates
//! go to the store, the same way a file reload's do; the data path never knows the difference.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::chain::Accepted;
use super::issue::{issue, IssueError};
use super::schedule::{jitter, renewal_time, Backoff};
use crate::config::MeshCaConfig;
use crate::store::Store;
use crate::tls::credentials::Credentials;
use crate::tls::identity::Rfc3339;

/// The least time left for a last attempt at start-up: less, and its error would only say the
/// time ran out.
const MIN_LAST_ATTEMPT: Duration = Duration::from_millis(500);

/// Why start-up got no certificate.
#[derive(Debug, thiserror::Error)]
#[error("no workload certificate from the mesh CA at {address} after {attempts} attempt(s) in {waited:?}: {last}")]
pub struct FirstCertificateError {
    pub address: String,
    pub attempts: u32,
    pub waited: Duration,
    /// The last attempt's error: what to fix.
    pub last: IssueError,
}

/// The first certificate and when to renew it.
pub struct First {
    pub credentials: Credentials,
    pub renew_at: SystemTime,
}

/// Asks the CA until it issues an acceptable certificate or `config.start_timeout` has passed;
/// each failure is logged as it happens, the last one is returned.
pub async fn first_certificate(config: &MeshCaConfig) -> Result<First, FirstCertificateError> {
    let started = tokio::time::Instant::now();
    let deadline = started + config.start_timeout;
    let mut backoff = Backoff::default();
    let mut attempts = 0;
    tracing::info!(
        ca = %config.address,
        spiffe_id = %config.identity,
        cluster_id = %config.cluster_id,
        key_type = ?config.key_type,
        "asking the mesh CA for the workload certificate"
    );
    let give_up = |attempts: u32, last: IssueError| FirstCertificateError {
        address: config.address.clone(),
        attempts,
        waited: Duration::from_millis(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        last,
    };
    loop {
        attempts += 1;
        // An attempt never outlives the start-up bound, whatever --ca-request-timeout says.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let error = match tokio::time::timeout(left, issue(config)).await {
            Ok(Ok(accepted)) => return Ok(first(config, accepted)),
            Ok(Err(error)) => error,
            Err(_) => IssueError::NoAnswer {
                address: config.address.clone(),
                after: left,
            },
        };
        let now = tokio::time::Instant::now();
        // Too little time for another attempt to mean anything: this error is the answer.
        if deadline.saturating_duration_since(now) < MIN_LAST_ATTEMPT {
            return Err(give_up(attempts, error));
        }
        // The last retry comes before the deadline, not after it.
        let delay = backoff.next(jitter()).min(deadline - now - MIN_LAST_ATTEMPT);
        tracing::warn!(error = %error, attempt = attempts, retry_in = ?delay, "no workload certificate yet");
        tokio::time::sleep(delay).await;
    }
}

fn first(config: &MeshCaConfig, accepted: Accepted) -> First {
    First {
        renew_at: renewal_of(config, &accepted),
        credentials: accepted.credentials,
    }
}

/// The lifetime counts from when the certificate arrived, not from its notBefore: CAs backdate
/// notBefore to absorb clock skew, which would otherwise pull a short certificate's renewal
/// into the past.
fn renewal_of(config: &MeshCaConfig, accepted: &Accepted) -> SystemTime {
    renewal_time(
        accepted.not_before.max(SystemTime::now()),
        accepted.credentials.not_after,
        config.renew_ratio,
        jitter(),
    )
}

/// Renews the certificate in `store` until `shutdown` turns true: at `renew_at`, then at each
/// new certificate's own renewal time. A failure (the CA unreachable, or a chain refused) is
/// logged and counted, and retried with backoff; the certificate in use serves until it
/// expires, and readiness says so when it has.
pub async fn keep_fresh(
    config: MeshCaConfig,
    store: Arc<Store>,
    renew_at: SystemTime,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next = renew_at;
    store.renewal_scheduled(next);
    tracing::info!(renew_at = %Rfc3339(next), "workload certificate renewal scheduled");
    let mut backoff = Backoff::default();
    loop {
        let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let failure = match issue(&config).await {
            Ok(accepted) => {
                let renew_at = renewal_of(&config, &accepted);
                match store.publish_issued(&accepted.credentials, renew_at) {
                    Ok(()) => {
                        backoff.reset();
                        next = renew_at;
                        tracing::info!(renew_at = %Rfc3339(next), "workload certificate renewed");
                        continue;
                    }
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        let delay = backoff.next(jitter());
        next = SystemTime::now() + delay;
        store.renewal_failed(failure.clone(), next);
        let current = store.tls();
        tracing::error!(
            error = %failure,
            retry_in = ?delay,
            serial = %current.serial,
            not_after = %Rfc3339(current.not_after),
            "workload certificate renewal failed; the certificate in use keeps serving until it expires"
        );
    }
}
