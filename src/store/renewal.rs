//! How renewals from the mesh CA are going, for `/config_dump`.

use std::time::SystemTime;

/// Counts since start; the first issuance, before the proxy serves, is not a renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    /// When the CA is asked next: the renewal time, or the retry after a failure.
    pub next_at: Option<SystemTime>,
    pub ok: u64,
    pub failed: u64,
    /// Why the last attempt failed, until one succeeds.
    pub last_error: Option<String>,
}
