//! The ClientHello parser on arbitrary bytes (`scripts/fuzz client_hello`).
//!
//! Beyond "never panics" (afl.rs turns a panic into a crash), the checks are the contract that
//! `src/tls/client_hello.rs` documents for a caller that parses a growing buffer:
//! - a verdict other than `Incomplete` is final: every prefix of the input answers `Incomplete`
//!   or that same verdict, and once a prefix has a final verdict every longer one keeps it;
//! - bytes appended after a final verdict change nothing;
//! - `Incomplete { needed: Some(n) }` asks for more than it has, and never for more than the
//!   hello turns out to take;
//! - `NotTls` and `Complete` agree with the first two bytes (a TLS 3.x handshake record or not);
//! - what `Complete` returns fits in the input: a 1..=253-byte ASCII SNI and 1..=255-byte ALPN
//!   names.

use peerguard::tls::client_hello::{parse, HelloParse};

/// Inputs up to this length have every prefix checked; longer ones the first bytes (record and
/// handshake headers), the last few and a spread in between: parsing every prefix of a long
/// input costs quadratic time and would slow the fuzzer down more than it finds.
const ALL_PREFIXES_UP_TO: usize = 128;
const HEAD_CUTS: usize = 16;
const SPREAD_CUTS: usize = 64;
const TAIL_CUTS: usize = 4;

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}

fn check(data: &[u8]) {
    let whole = parse(data);
    check_shape(data, &whole);
    let is_final = !matches!(whole, HelloParse::Incomplete { .. });

    if is_final {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, 0xff, 0x00]);
        assert_eq!(parse(&longer), whole, "appending bytes changed a final verdict");
    }

    // Walk the prefixes from the shortest: Incomplete, then (if the whole is final) the final
    // verdict from some length on.
    let mut first_final: Option<usize> = None;
    let mut lower_bounds: Vec<usize> = Vec::new();
    for cut in cuts(data.len()) {
        let prefix = &data[..cut];
        let answer = parse(prefix);
        check_shape(prefix, &answer);
        match &answer {
            HelloParse::Incomplete { needed } => {
                assert!(
                    first_final.is_none(),
                    "prefix {cut} is Incomplete after prefix {first_final:?} was final: {whole:?}"
                );
                lower_bounds.extend(*needed);
            }
            final_answer => {
                assert_eq!(
                    final_answer,
                    &whole,
                    "prefix {cut} of {} contradicts the whole input",
                    data.len()
                );
                first_final.get_or_insert(cut);
            }
        }
    }
    // `needed` is a lower bound of the whole hello's length, record headers included.
    if let (HelloParse::Complete(_), Some(hello_len)) = (&whole, first_final) {
        for needed in lower_bounds {
            assert!(
                needed <= hello_len,
                "a prefix said it needs {needed} bytes; the hello took {hello_len}"
            );
        }
    }
}

/// Checks of one answer against the bytes it was given.
fn check_shape(input: &[u8], answer: &HelloParse) {
    let tls_record_start = matches!(input, [0x16, 0x03, ..]);
    match answer {
        HelloParse::NotTls => assert!(!input.is_empty() && !tls_record_start, "NotTls for {input:02x?}"),
        HelloParse::Incomplete { needed } => {
            if let Some(needed) = needed {
                assert!(
                    *needed > input.len(),
                    "Incomplete with {} bytes, needs {needed}",
                    input.len()
                );
            }
        }
        HelloParse::Malformed(_) => assert!(tls_record_start, "Malformed without a TLS record header"),
        HelloParse::Complete(hello) => {
            assert!(tls_record_start, "Complete without a TLS record header");
            let mut carried = 0;
            if let Some(sni) = &hello.sni {
                assert!((1..=253).contains(&sni.len()) && sni.is_ascii(), "SNI {sni:?}");
                carried += sni.len();
            }
            for name in &hello.alpn {
                assert!((1..=255).contains(&name.len()), "ALPN name of {} bytes", name.len());
                carried += name.len();
            }
            assert!(carried < input.len(), "more SNI and ALPN bytes than input bytes");
        }
    }
}

/// Prefix lengths to check, ascending, the whole input excluded.
fn cuts(len: usize) -> Vec<usize> {
    if len <= ALL_PREFIXES_UP_TO {
        return (0..len).collect();
    }
    let mut cuts: Vec<usize> = (0..HEAD_CUTS).collect();
    cuts.extend((0..SPREAD_CUTS).map(|i| i * len / SPREAD_CUTS));
    cuts.extend(len - TAIL_CUTS..len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}
