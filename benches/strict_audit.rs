//! What the STRICT audit adds to each finished connection (docs/strict-audit.md): the record's
//! would-be fate and the port's table update. The common case is a source already in the
//! table; the worst is a flood of new sources into a full table, where each one first evicts
//! the least recently seen.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use peerguard::outcome::record::{Ended, Record};
use peerguard::outcome::{Action, End, Opening, Reason, Transferred};
use peerguard::policy::MtlsMode;
use peerguard::strict_audit::{StrictAudit, MAX_SOURCES_PER_PORT};
use prometheus_client::metrics::counter::Counter;

fn plaintext_from(address: IpAddr, mode: MtlsMode) -> Record {
    let ended = Ended {
        action: Action::Passthrough,
        reason: Reason::PassthroughPlaintext,
        opening: Opening::Plaintext,
        sniff_time: Some(Duration::from_micros(20)),
        tls: None,
        transfer: Some(Transferred {
            to_app: 1,
            to_client: 1,
            end: End::Completed,
            opening: Opening::Plaintext,
        }),
        authorization: None,
    };
    Record::new(
        SocketAddr::new(address, 40000),
        8080,
        Some((mode, "bench/default".into())),
        ended,
        Duration::from_micros(100),
    )
}

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + i))
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("strict_audit");

    let audit = StrictAudit::new(Counter::default());
    let known = plaintext_from(address(1), MtlsMode::Permissive);
    audit.record(&known);
    group.bench_function("known_source", |b| b.iter(|| audit.record(black_box(&known))));

    let strict = plaintext_from(address(1), MtlsMode::Strict);
    group.bench_function("strict_port", |b| b.iter(|| audit.record(black_box(&strict))));

    let full = StrictAudit::new(Counter::default());
    for i in 0..MAX_SOURCES_PER_PORT as u32 {
        full.record(&plaintext_from(address(i), MtlsMode::Permissive));
    }
    let newcomers: Vec<Record> = (0..4096)
        .map(|i| plaintext_from(address(100_000 + i), MtlsMode::Permissive))
        .collect();
    let mut next = newcomers.iter().cycle();
    group.bench_function("new_source_into_a_full_table", |b| {
        b.iter(|| full.record(black_box(next.next().unwrap())))
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
