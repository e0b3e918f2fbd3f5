//! `cargo +nightly fuzz run client_hello fuzz/corpus/client_hello` (seed the corpus with
//! tests/data/client_hellos/*.bin). The parser must never panic, and what it says about a
//! prefix must never contradict what it says about the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerguard::tls::client_hello::{parse, HelloParse};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if matches!(whole, HelloParse::Complete(_)) {
        // A prefix is either short of the hello ("need more bytes") or still holds all of it
        // (bytes after the last record are not looked at): never Malformed or NotTls.
        let half = parse(&data[..data.len() / 2]);
        assert!(matches!(half, HelloParse::Incomplete { .. }) || half == whole, "{half:?} vs {whole:?}");
    }
});
