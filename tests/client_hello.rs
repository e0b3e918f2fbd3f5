//! The ClientHello parser against real ClientHellos from rustls, `openssl s_client` and `curl`.
//!
//! The captures under `tests/data/client_hellos/` are what these tests read, so they run the
//! same everywhere. To regenerate them (needs `openssl` and `curl` on PATH):
//!
//! ```sh
//! cargo test --test client_hello -- --ignored regenerate_captured_hellos
//! ```
//!
//! One test also captures from `openssl s_client` live on every run.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerguard::tls::client_hello::{parse, ClientHello, HelloParse, MalformedHello};
use proptest::prelude::*;
use rustls::pki_types::ServerName;

const CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HELLO: usize = 16 * 1024;

/// One committed capture and what it must parse to.
struct Capture {
    file: &'static str,
    sni: Option<&'static str>,
    alpn: fn() -> Vec<String>,
    /// How it is made, for `regenerate_captured_hellos`.
    make: fn() -> Vec<u8>,
}

fn alpn(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// 32 protocol names of 49 bytes: an ALPN list that pushes a hello well over 1.5 KiB.
fn long_alpn() -> Vec<String> {
    (0..32).map(|i| format!("proto-{i:02}-{}", "x".repeat(40))).collect()
}

const CAPTURES: [Capture; 6] = [
    Capture {
        file: "rustls_istio_h2.bin",
        sni: Some("app.default.svc.cluster.local"),
        alpn: || alpn(&["istio", "h2"]),
        make: || rustls_hello("app.default.svc.cluster.local", &alpn(&["istio", "h2"]), None),
    },
    Capture {
        file: "rustls_fragmented_64.bin",
        sni: Some("app.default.svc.cluster.local"),
        alpn: || alpn(&["istio-peer-exchange", "istio", "h2"]),
        make: || {
            rustls_hello(
                "app.default.svc.cluster.local",
                &alpn(&["istio-peer-exchange", "istio", "h2"]),
                Some(64),
            )
        },
    },
    Capture {
        file: "openssl_istio_h2.bin",
        sni: Some("echo.mesh.example"),
        alpn: || alpn(&["istio", "h2"]),
        make: || openssl_hello("echo.mesh.example", "istio,h2"),
    },
    Capture {
        file: "curl_http2.bin",
        sni: None, // curl sends no SNI for an IP address
        alpn: || alpn(&["h2", "http/1.1"]),
        make: curl_hello,
    },
    Capture {
        file: "openssl_long_alpn.bin",
        sni: Some("big.mesh.example"),
        alpn: long_alpn,
        make: || openssl_hello("big.mesh.example", &long_alpn().join(",")),
    },
    Capture {
        file: "rustls_long_alpn_fragmented_512.bin",
        sni: Some("big.mesh.example"),
        alpn: long_alpn,
        make: || rustls_hello("big.mesh.example", &long_alpn(), Some(512)),
    },
];

fn data_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/client_hellos")
        .join(file)
}

fn load(capture: &Capture) -> Vec<u8> {
    std::fs::read(data_path(capture.file)).unwrap_or_else(|e| panic!("{}: {e}", capture.file))
}

fn expected(capture: &Capture) -> ClientHello {
    ClientHello {
        sni: capture.sni.map(str::to_owned),
        alpn: (capture.alpn)().into_iter().map(String::into_bytes).collect(),
    }
}

/// The first flight of a rustls client, straight from its state machine: no socket needed.
fn rustls_hello(sni: &str, alpn: &[String], max_fragment_size: Option<usize>) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.max_fragment_size = max_fragment_size;
    let name = ServerName::try_from(sni.to_owned()).expect("DNS name");
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut out = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut out).expect("write_tls to a Vec");
    }
    out
}

fn openssl_hello(sni: &str, alpn: &str) -> Vec<u8> {
    capture_from(|port| {
        let mut command = Command::new("openssl");
        command.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
            "-alpn",
            alpn,
        ]);
        command
    })
}

fn curl_hello() -> Vec<u8> {
    capture_from(|port| {
        let mut command = Command::new("curl");
        command.args([
            "--http2",
            "-sk",
            "--max-time",
            "10",
            &format!("https://127.0.0.1:{port}/"),
        ]);
        command
    })
}

/// Kills the client process this test started, whatever happens to the test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a real client against a listener on 127.0.0.1 that never answers, and reads until the
/// parser has a whole ClientHello; the client is then killed. Bounded in time and size.
fn capture_from(client: impl FnOnce(u16) -> Command) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let child = client(port)
        .stdin(Stdio::piped()) // held open: openssl s_client quits at stdin EOF
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start client (is it installed?)");
    let _guard = ChildGuard(child);
    let deadline = Instant::now() + CAPTURE_TIMEOUT;
    listener.set_nonblocking(true).expect("nonblocking");
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("client did not connect: {e}"),
        }
    };
    read_hello(&mut stream, deadline)
}

fn read_hello(stream: &mut TcpStream, deadline: Instant) -> Vec<u8> {
    stream.set_nonblocking(false).expect("blocking");
    let mut buf = Vec::new();
    while buf.len() < MAX_HELLO {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("read within the capture timeout");
        assert!(n > 0, "client closed before a whole ClientHello");
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            HelloParse::Complete(_) => return buf,
            HelloParse::Incomplete { .. } => continue,
            other => panic!("live capture did not parse: {other:?}"),
        }
    }
    panic!("no ClientHello within {MAX_HELLO} bytes")
}

/// Record payload lengths, walking the record headers.
fn record_lengths(buf: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut at = 0;
    while let Some([_, _, _, hi, lo]) = buf.get(at..at + 5).map(|h| <[u8; 5]>::try_from(h).expect("5 bytes")) {
        let len = usize::from(hi) << 8 | usize::from(lo);
        lengths.push(len);
        at += 5 + len;
    }
    lengths
}

/// The handshake bytes of a record sequence, without record headers.
fn handshake_bytes(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for len in record_lengths(buf) {
        out.extend_from_slice(&buf[at + 5..at + 5 + len]);
        at += 5 + len;
    }
    out
}

fn into_records(handshake: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = handshake;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((*size).min(rest.len()));
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
        rest = tail;
    }
    out
}

/// Every strict prefix is Incomplete, `needed` never overshoots the real size, and the whole
/// is the expected hello.
fn assert_parses_incrementally(name: &str, whole: &[u8], expected: &ClientHello) {
    for end in 0..whole.len() {
        match parse(&whole[..end]) {
            HelloParse::Incomplete { needed: None } => {}
            HelloParse::Incomplete { needed: Some(needed) } => {
                assert!(
                    needed > end && needed <= whole.len(),
                    "{name}: prefix {end}: needed {needed}"
                )
            }
            other => panic!("{name}: prefix of {end} bytes gave {other:?}"),
        }
    }
    assert_eq!(parse(whole), HelloParse::Complete(expected.clone()), "{name}");
}

#[test]
fn captured_hellos_parse_whole_and_every_prefix_is_incomplete() {
    for capture in &CAPTURES {
        assert_parses_incrementally(capture.file, &load(capture), &expected(capture));
    }
}

#[test]
fn captures_cover_fragmented_and_large_hellos() {
    let fragmented = load(&CAPTURES[1]);
    assert!(
        record_lengths(&fragmented).len() > 4,
        "{:?}",
        record_lengths(&fragmented)
    );
    for capture in &CAPTURES[4..] {
        let hello = load(capture);
        assert!(hello.len() > 1536, "{}: {} bytes", capture.file, hello.len());
    }
    assert!(record_lengths(&load(&CAPTURES[5])).len() > 3);
}

#[test]
fn needed_is_exact_for_single_record_hellos() {
    let whole = load(&CAPTURES[2]);
    assert_eq!(record_lengths(&whole).len(), 1);
    assert_eq!(
        parse(&whole[..9]),
        HelloParse::Incomplete {
            needed: Some(whole.len())
        }
    );
}

#[test]
fn live_openssl_s_client_hello_parses() {
    let hello = openssl_hello("live.mesh.example", "istio-peer-exchange,istio,h2");
    let expected = ClientHello {
        sni: Some("live.mesh.example".into()),
        alpn: vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec(), b"h2".to_vec()],
    };
    assert_parses_incrementally("live openssl", &hello, &expected);
}

/// Index of the length byte in front of the ALPN name `istio` in a real hello.
fn istio_name_length_index(hello: &[u8]) -> usize {
    hello
        .windows(6)
        .position(|w| w == b"\x05istio")
        .expect("hello offers istio")
}

#[test]
fn corrupted_real_hellos_are_malformed() {
    let hello = load(&CAPTURES[2]);
    let at = istio_name_length_index(&hello);

    let mut empty_name = hello.clone();
    empty_name[at] = 0;
    assert_eq!(parse(&empty_name), HelloParse::Malformed(MalformedHello::EmptyAlpnName));

    let mut past_the_end = hello.clone();
    past_the_end[at] = 0xff;
    assert_eq!(
        parse(&past_the_end),
        HelloParse::Malformed(MalformedHello::LengthOverrun)
    );

    let mut oversize = hello.clone();
    oversize[6..9].copy_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(
        parse(&oversize),
        HelloParse::Malformed(MalformedHello::HandshakeTooLong)
    );

    let mut interleaved = into_records(&handshake_bytes(&hello), &[100]);
    interleaved[105] = 23; // the second record claims to be application data
    assert_eq!(parse(&interleaved), HelloParse::Malformed(MalformedHello::RecordType));

    let mut empty_record = hello.clone();
    empty_record[3..5].copy_from_slice(&[0, 0]);
    assert_eq!(
        parse(&empty_record),
        HelloParse::Malformed(MalformedHello::RecordLength)
    );

    assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), HelloParse::NotTls);
    assert_eq!(parse(b"\x16\x02garbage"), HelloParse::NotTls);
}

fn all_capture_bytes() -> Vec<Vec<u8>> {
    CAPTURES.iter().map(load).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_record_header_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buf = vec![22, 3, 1];
        buf.extend(bytes);
        let _ = parse(&buf);
    }

    #[test]
    fn mutated_real_hellos_never_panic(
        which in 0..CAPTURES.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut hello = all_capture_bytes().swap_remove(which);
        for (index, value) in edits {
            let at = index.index(hello.len());
            hello[at] = value;
        }
        let _ = parse(&hello);
        let _ = parse(&hello[..cut.index(hello.len())]);
    }

    #[test]
    fn refragmenting_a_real_hello_keeps_its_meaning(
        which in 0..CAPTURES.len(),
        sizes in proptest::collection::vec(1usize..600, 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let capture = &CAPTURES[which];
        let refragmented = into_records(&handshake_bytes(&load(capture)), &sizes);
        prop_assert_eq!(parse(&refragmented), HelloParse::Complete(expected(capture)));
        let prefix = &refragmented[..cut.index(refragmented.len())];
        prop_assert!(matches!(parse(prefix), HelloParse::Incomplete { .. }), "prefix {}", prefix.len());
    }
}

#[test]
#[ignore = "rewrites tests/data/client_hellos; needs openssl and curl"]
fn regenerate_captured_hellos() {
    for capture in &CAPTURES {
        let bytes = (capture.make)();
        assert_eq!(
            parse(&bytes),
            HelloParse::Complete(expected(capture)),
            "{}",
            capture.file
        );
        std::fs::write(data_path(capture.file), &bytes).expect("write capture");
    }
}
