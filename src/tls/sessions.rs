//! TLS session resumption that cannot outlive the client certificate
//! (docs/connections.md#session-resumption).
//!
//! rustls restores a resumed session's client certificate without verifying it again, and both
//! TLS 1.2 session IDs (reusable) and TLS 1.3 tickets (each resumption issues the next) can keep
//! a session alive forever. So every stored session carries the bounds of the *full* handshake
//! that first verified its certificate: the certificate's `notAfter` and the moment
//! `--session-lifetime` runs out. A resumption past either bound is declined (rustls then does a
//! full handshake, which verifies the certificate afresh), and a ticket issued on a resumed
//! session inherits its bounds instead of starting new ones.
//!
//! rustls stores sessions as opaque bytes through [`StoresServerSessions`], which says nothing
//! about the connection. So each handshake gets its own [`HandshakeSessions`] in front of the
//! shared [`SessionStore`]: it remembers what this handshake resumed and holds back what this
//! handshake stored until the handshake has succeeded and its bounds are known
//! ([`HandshakeSessions::finish`]). A handshake that fails stores nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::server::StoresServerSessions;

/// Why a resumption was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// The client certificate the session was established with has expired.
    CertificateExpired,
    /// `--session-lifetime` has passed since the full handshake.
    SessionLifetime,
}

impl Declined {
    pub const ALL: [Declined; 2] = [Declined::CertificateExpired, Declined::SessionLifetime];

    pub fn as_str(self) -> &'static str {
        match self {
            Declined::CertificateExpired => "certificate_expired",
            Declined::SessionLifetime => "session_lifetime",
        }
    }
}

/// How long a session may be resumed: the bounds of the full handshake it descends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub certificate_not_after: SystemTime,
    pub lifetime_ends: SystemTime,
}

impl Bounds {
    fn check(&self, now: SystemTime) -> Result<(), Declined> {
        if now > self.certificate_not_after {
            Err(Declined::CertificateExpired)
        } else if now > self.lifetime_ends {
            Err(Declined::SessionLifetime)
        } else {
            Ok(())
        }
    }
}

/// The resumable sessions of one credentials generation, bounded in count (oldest out first).
#[derive(Debug)]
pub struct SessionStore {
    lifetime: Duration,
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<Vec<u8>, (Vec<u8>, Bounds)>,
    /// Insertion order, for eviction; may name keys already taken (skipped when evicting).
    order: VecDeque<Vec<u8>>,
}

impl SessionStore {
    pub fn new(lifetime: Duration, capacity: usize) -> Self {
        SessionStore {
            lifetime,
            capacity,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, key: Vec<u8>, value: Vec<u8>, bounds: Bounds) {
        let mut entries = self.lock();
        while entries.by_key.len() >= self.capacity {
            let Some(oldest) = entries.order.pop_front() else { break };
            entries.by_key.remove(&oldest);
        }
        if entries.by_key.insert(key.clone(), (value, bounds)).is_none() {
            entries.order.push_back(key);
        }
        // Keys taken since they were queued leave stale names behind; keep the queue bounded.
        if entries.order.len() > 2 * self.capacity {
            let Entries { by_key, order } = &mut *entries;
            order.retain(|key| by_key.contains_key(key));
        }
    }

    /// The session under `key` if it may still be resumed at `now`; `remove` takes it out
    /// (TLS 1.3 tickets are single-use). An out-of-bounds session is removed either way.
    fn lookup(&self, key: &[u8], remove: bool, now: SystemTime) -> Option<Result<(Vec<u8>, Bounds), Declined>> {
        let mut entries = self.lock();
        let (value, bounds) = entries.by_key.get(key)?;
        match bounds.check(now) {
            Ok(()) if remove => entries.by_key.remove(key).map(Ok),
            Ok(()) => Some(Ok((value.clone(), *bounds))),
            Err(declined) => {
                entries.by_key.remove(key);
                Some(Err(declined))
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

/// The session storage rustls sees during one handshake.
#[derive(Debug)]
pub struct HandshakeSessions {
    store: Arc<SessionStore>,
    state: Mutex<HandshakeState>,
}

#[derive(Debug, Default)]
struct HandshakeState {
    /// The bounds of the session this handshake resumed.
    resumed: Option<Bounds>,
    /// A resumption this handshake asked for and was refused.
    declined: Option<Declined>,
    /// Sessions rustls stored during this handshake, held until it succeeds.
    pending: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HandshakeSessions {
    pub fn new(store: Arc<SessionStore>) -> Self {
        HandshakeSessions {
            store,
            state: Mutex::new(HandshakeState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, HandshakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resume(&self, key: &[u8], remove: bool) -> Option<Vec<u8>> {
        let found = self.store.lookup(key, remove, SystemTime::now())?;
        let mut state = self.state();
        match found {
            Ok((value, bounds)) => {
                state.resumed = Some(bounds);
                Some(value)
            }
            Err(declined) => {
                state.declined = Some(declined);
                None
            }
        }
    }

    /// A resumption this handshake was refused, if any.
    pub fn declined(&self) -> Option<Declined> {
        self.state().declined
    }

    /// The handshake succeeded: what it stored becomes resumable, within the bounds of the
    /// session it resumed, or else of its own full handshake (`certificate_not_after` being the
    /// verified client certificate's).
    pub fn finish(&self, certificate_not_after: SystemTime) {
        let mut state = self.state();
        let bounds = state.resumed.unwrap_or_else(|| Bounds {
            certificate_not_after,
            lifetime_ends: SystemTime::now() + self.store.lifetime,
        });
        for (key, value) in state.pending.drain(..) {
            self.store.insert(key, value, bounds);
        }
    }
}

impl StoresServerSessions for HandshakeSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.state().pending.push((key, value));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.resume(key, false)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.resume(key, true)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn handshake(store: &Arc<SessionStore>) -> HandshakeSessions {
        HandshakeSessions::new(store.clone())
    }

    #[test]
    fn a_session_is_resumable_only_after_its_handshake_succeeded() {
        let store = Arc::new(SessionStore::new(HOUR, 16));
        let full = handshake(&store);
        full.put(b"id".to_vec(), b"session".to_vec());
        assert_eq!(store.len(), 0, "held back until the handshake succeeds");
        full.finish(SystemTime::now() + HOUR);
        assert_eq!(handshake(&store).get(b"id").as_deref(), Some(&b"session"[..]));
        assert_eq!(store.len(), 1, "a TLS 1.2 session ID stays for the next resumption");

        let failed = handshake(&store);
        failed.put(b"other".to_vec(), b"never".to_vec());
        drop(failed);
        assert_eq!(handshake(&store).get(b"other"), None);
    }

    #[test]
    fn a_session_past_the_certificate_or_the_lifetime_is_declined_and_forgotten() {
        let store = Arc::new(SessionStore::new(HOUR, 16));
        let full = handshake(&store);
        full.put(b"expired-cert".to_vec(), b"s".to_vec());
        full.finish(SystemTime::now() - Duration::from_secs(1));
        let again = handshake(&store);
        assert_eq!(again.take(b"expired-cert"), None);
        assert_eq!(again.declined(), Some(Declined::CertificateExpired));
        assert_eq!(store.len(), 0);

        let short = Arc::new(SessionStore::new(Duration::ZERO, 16));
        let full = handshake(&short);
        full.put(b"old".to_vec(), b"s".to_vec());
        full.finish(SystemTime::now() + HOUR);
        std::thread::sleep(Duration::from_millis(5));
        let again = handshake(&short);
        assert_eq!(again.get(b"old"), None);
        assert_eq!(again.declined(), Some(Declined::SessionLifetime));
    }

    #[test]
    fn a_ticket_issued_on_a_resumed_session_inherits_its_bounds() {
        let store = Arc::new(SessionStore::new(HOUR, 16));
        let full = handshake(&store);
        full.put(b"t1".to_vec(), b"s".to_vec());
        let not_after = SystemTime::now() + Duration::from_secs(60);
        full.finish(not_after);

        let resumed = handshake(&store);
        assert!(resumed.take(b"t1").is_some());
        resumed.put(b"t2".to_vec(), b"s".to_vec());
        // Whatever this handshake would claim, the chain keeps the first handshake's bounds.
        resumed.finish(SystemTime::now() + 100 * HOUR);
        let (_, bounds) = store.lookup(b"t2", false, SystemTime::now()).unwrap().unwrap();
        assert_eq!(bounds.certificate_not_after, not_after);
        assert!(
            store.lookup(b"t1", false, SystemTime::now()).is_none(),
            "tickets are single-use"
        );
    }

    #[test]
    fn the_store_holds_at_most_its_capacity_oldest_out_first() {
        let store = Arc::new(SessionStore::new(HOUR, 4));
        for i in 0..100u8 {
            let full = handshake(&store);
            full.put(vec![i], vec![i]);
            full.finish(SystemTime::now() + HOUR);
            if i % 3 == 0 {
                handshake(&store).take(&[i]);
            }
        }
        assert!(store.len() <= 4);
        assert!(store.lock().order.len() <= 8);
        assert!(handshake(&store).get(&[98]).is_some(), "the newest stays");
        assert!(handshake(&store).get(&[0]).is_none(), "the oldest went");
    }
}
