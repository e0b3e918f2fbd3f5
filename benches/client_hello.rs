//! `client_hello::parse` on the captured real ClientHellos (tests/data/client_hellos): the cost
//! the data path pays once per TLS connection, for a typical hello, a fragmented one and a
//! large one.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peerguard::tls::client_hello::{parse, HelloParse};

const HELLOS: [&str; 4] = [
    "openssl_istio_h2.bin",
    "rustls_istio_h2.bin",
    "rustls_fragmented_64.bin",
    "openssl_long_alpn.bin",
];

fn parse_captured_hellos(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/client_hellos");
    let mut group = c.benchmark_group("client_hello_parse");
    for name in HELLOS {
        let hello = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(parse(&hello), HelloParse::Complete(_)), "{name}");
        group.throughput(Throughput::Bytes(hello.len() as u64));
        group.bench_function(name, |b| b.iter(|| parse(black_box(&hello))));
    }
    group.finish();
}

criterion_group!(benches, parse_captured_hellos);
criterion_main!(benches);
