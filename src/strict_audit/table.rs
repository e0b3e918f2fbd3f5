//! One port's table of the sources that would not pass under STRICT: bounded, least recently
//! seen dropped first.
//!
//! A source already in the table costs one hash lookup and a few stores: no allocation, unless
//! its SNI or ALPN list changed. A new source in a full table first drops the least recently
//! seen one, found by a scan of the table (at most [`MAX_SOURCES_PER_PORT`] entries), so a flood
//! of distinct sources costs a bounded amount per connection and never grows the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::outcome::client_text::{ClientText, LogStyle};
use crate::outcome::record::TlsRecord;
use crate::outcome::strict_fate::{AuditKind, StrictFate, StrictVerdict};
use crate::strict_audit::report::SourceReport;
use crate::tls::identity::unix_seconds;

/// Most sources kept per port.
pub const MAX_SOURCES_PER_PORT: usize = 256;

/// A source is a client address and what it sent: one client may send plaintext to a port and
/// TLS to it too, and each needs its own fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SourceKey {
    address: IpAddr,
    kind: AuditKind,
}

#[derive(Debug)]
struct Source {
    verdict: StrictVerdict,
    /// The last SNI and ALPN list the source sent, for TLS.
    sni: Option<Box<[u8]>>,
    alpn: Vec<Vec<u8>>,
    connections: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// The table's clock when last seen: the eviction order (wall-clock time can step back).
    recency: u64,
}

#[derive(Debug, Default)]
pub struct SourceTable {
    sources: HashMap<SourceKey, Source>,
    clock: u64,
    evicted: u64,
}

impl SourceTable {
    /// Notes one connection that would not pass; true when a source had to be dropped for it.
    pub fn see(&mut self, address: IpAddr, fate: StrictFate, tls: Option<&TlsRecord>, now: SystemTime) -> bool {
        self.clock += 1;
        let key = SourceKey {
            address,
            kind: fate.kind,
        };
        if let Some(source) = self.sources.get_mut(&key) {
            source.connections += 1;
            source.last_seen = now;
            source.recency = self.clock;
            source.verdict = fate.verdict;
            if let Some(tls) = tls {
                source.remember_hello(tls);
            }
            return false;
        }
        let evicted = self.sources.len() >= MAX_SOURCES_PER_PORT;
        if evicted {
            self.evict_least_recent();
        }
        let mut source = Source {
            verdict: fate.verdict,
            sni: None,
            alpn: Vec::new(),
            connections: 1,
            first_seen: now,
            last_seen: now,
            recency: self.clock,
        };
        if let Some(tls) = tls {
            source.remember_hello(tls);
        }
        self.sources.insert(key, source);
        evicted
    }

    fn evict_least_recent(&mut self) {
        let oldest = self
            .sources
            .iter()
            .min_by_key(|(_, source)| source.recency)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.sources.remove(&key);
            self.evicted += 1;
        }
    }

    #[cfg(test)]
    fn source_count(&self) -> usize {
        self.sources.len()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The sources, those to fix first first: refused before unknown, then by connections and
    /// by recency.
    pub fn report(&self) -> Vec<SourceReport> {
        let mut sources: Vec<(&SourceKey, &Source)> = self.sources.iter().collect();
        sources.sort_by(|(_, a), (_, b)| {
            a.verdict
                .cmp(&b.verdict)
                .then(b.connections.cmp(&a.connections))
                .then(b.recency.cmp(&a.recency))
        });
        sources
            .into_iter()
            .map(|(key, source)| SourceReport {
                address: key.address,
                kind: key.kind,
                verdict: source.verdict,
                // Escaped as in the JSON access log: a ClientHello is the client's to forge.
                sni: source.sni.as_deref().map(escaped),
                alpn: source.alpn.iter().map(|protocol| escaped(protocol)).collect(),
                connections: source.connections,
                first_seen_unix: unix_seconds(source.first_seen),
                last_seen_unix: unix_seconds(source.last_seen),
            })
            .collect()
    }
}

impl Source {
    /// Keeps what the ClientHello offered; copies only what differs from last time.
    fn remember_hello(&mut self, tls: &TlsRecord) {
        let sni = tls.sni.as_deref().map(str::as_bytes);
        if self.sni.as_deref() != sni {
            self.sni = sni.map(Box::from);
        }
        if self.alpn != tls.alpn {
            self.alpn.clone_from(&tls.alpn);
        }
    }
}

fn escaped(bytes: &[u8]) -> String {
    ClientText {
        bytes,
        style: LogStyle::Json,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    const PLAINTEXT: StrictFate = StrictFate {
        verdict: StrictVerdict::Refuse,
        kind: AuditKind::Plaintext,
    };
    const APP_TLS: StrictFate = StrictFate {
        verdict: StrictVerdict::Unknown,
        kind: AuditKind::Tls,
    };

    fn address(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + i))
    }

    #[test]
    fn a_flood_of_distinct_sources_keeps_the_most_recent_within_the_bound() {
        let mut table = SourceTable::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..10_000 {
            let evicted = table.see(address(i), PLAINTEXT, None, start);
            assert_eq!(evicted, i as usize >= MAX_SOURCES_PER_PORT, "source {i}");
            assert!(table.source_count() <= MAX_SOURCES_PER_PORT);
        }
        assert_eq!(table.source_count(), MAX_SOURCES_PER_PORT);
        assert_eq!(table.evicted(), 10_000 - MAX_SOURCES_PER_PORT as u64);
        let kept: std::collections::HashSet<IpAddr> = table.report().iter().map(|s| s.address).collect();
        let newest: std::collections::HashSet<IpAddr> =
            (10_000 - MAX_SOURCES_PER_PORT as u32..10_000).map(address).collect();
        assert_eq!(kept, newest, "the least recently seen went first");
    }

    #[test]
    fn a_source_seen_again_stays_when_a_newcomer_needs_room() {
        let mut table = SourceTable::default();
        let now = SystemTime::now();
        for i in 0..MAX_SOURCES_PER_PORT as u32 {
            table.see(address(i), PLAINTEXT, None, now);
        }
        table.see(address(0), PLAINTEXT, None, now);
        assert!(table.see(address(9999), PLAINTEXT, None, now));
        let kept: Vec<IpAddr> = table.report().iter().map(|s| s.address).collect();
        assert!(kept.contains(&address(0)), "seen again, so recent");
        assert!(!kept.contains(&address(1)), "the least recently seen was dropped");
    }

    #[test]
    fn sources_to_fix_first_come_first_with_their_hello() {
        let mut table = SourceTable::default();
        let now = SystemTime::now();
        let hello = TlsRecord {
            sni: Some("echo.demo.svc.cluster.local".into()),
            alpn: vec![b"h2".to_vec(), b"evil\n\"x".to_vec()],
            ..TlsRecord::default()
        };
        for _ in 0..5 {
            table.see(address(2), APP_TLS, Some(&hello), now);
        }
        table.see(address(3), PLAINTEXT, None, now);
        table.see(address(4), PLAINTEXT, None, now);
        table.see(address(4), PLAINTEXT, None, now);
        // The same client sending TLS as well is a second source: it needs a second fix.
        table.see(address(4), APP_TLS, Some(&hello), now);
        let report = table.report();
        let order: Vec<(IpAddr, AuditKind, u64)> = report.iter().map(|s| (s.address, s.kind, s.connections)).collect();
        assert_eq!(
            order,
            [
                (address(4), AuditKind::Plaintext, 2),
                (address(3), AuditKind::Plaintext, 1),
                (address(2), AuditKind::Tls, 5),
                (address(4), AuditKind::Tls, 1),
            ]
        );
        assert_eq!(report[2].sni.as_deref(), Some("echo.demo.svc.cluster.local"));
        assert_eq!(report[2].alpn, ["h2", r#"evil\x0a\"x"#]);
    }
}
