//! A test application that speaks plaintext and its own TLS (a certificate from a CA that is
//! not the mesh's) on one port, echoes every byte back, and records what it saw of each
//! connection: the exact ClientHello bytes when TLS reached it, and a digest of all it received.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerguard::certs::{DevCa, IssuedCert};
use peerguard::demo::prefixed::PrefixedIo;
use peerguard::tls::client_hello::{self, HelloParse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What the app saw of one finished connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The ClientHello as it arrived, when the connection reached the app as TLS.
    pub client_hello: Option<Vec<u8>>,
    /// The ALPN the app's own TLS negotiated.
    pub alpn: Option<Vec<u8>>,
    /// Every application byte received (after the app's own TLS, if any), hashed.
    pub received_sha256: [u8; 32],
    pub received_len: u64,
    /// The first application bytes received (up to 64), to check plaintext content.
    pub head: Vec<u8>,
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The app's own server certificate, from a CA that is not the mesh's.
    pub cert: IssuedCert,
    accepted: Arc<Mutex<usize>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        let own_ca = DevCa::generate().expect("app CA");
        let cert = own_ca
            .issue_server(&["localhost", "127.0.0.1"], Duration::from_secs(3600))
            .expect("app cert");
        // No ALPN list: the app ignores what clients offer (as many apps do), so its own TLS
        // answers even a client offering only mesh markers. Which certificate answered is
        // what tells peerguard's TLS from the app's.
        let config = rustls::ServerConfig::builder_with_provider(peerguard::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert_der.clone()],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("app key"),
            )
            .expect("app TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let accepted = Arc::new(Mutex::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, record) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    if let Ok(seen) = serve(stream, acceptor).await {
                        record.lock().unwrap().push(seen);
                    }
                });
            }
        });
        TestApp {
            addr,
            cert,
            accepted,
            seen,
        }
    }

    /// Connections accepted so far (finished or not).
    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    /// Waits (bounded) until `n` connections have finished, and returns what they saw.
    pub async fn wait_for_finished(&self, n: usize) -> Vec<Seen> {
        for _ in 0..500 {
            {
                let seen = self.seen.lock().unwrap();
                if seen.len() >= n {
                    return seen.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the app did not see {n} finished connections within 5 s");
    }
}

async fn serve(mut stream: TcpStream, acceptor: TlsAcceptor) -> std::io::Result<Seen> {
    let mut first = vec![0u8; 1];
    if stream.read(&mut first).await? == 0 {
        return echo(stream, Vec::new(), None, None).await;
    }
    if first[0] != 22 {
        return echo(stream, first, None, None).await;
    }
    // Read exactly the ClientHello, as it arrived, before the app's own TLS consumes it.
    let mut hello = first;
    loop {
        match client_hello::parse(&hello) {
            HelloParse::Complete(_) | HelloParse::Malformed(_) | HelloParse::NotTls => break,
            HelloParse::Incomplete { .. } => {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await? == 0 {
                    break;
                }
                hello.push(byte[0]);
            }
        }
    }
    let tls = acceptor.accept(PrefixedIo::new(hello.clone(), stream)).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    echo(tls, Vec::new(), Some(hello), alpn).await
}

/// Echoes until EOF, then half-closes; hashes everything received.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    already: Vec<u8>,
    client_hello: Option<Vec<u8>>,
    alpn: Option<Vec<u8>>,
) -> std::io::Result<Seen> {
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut len = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pending = already;
    loop {
        if !pending.is_empty() {
            hasher.update(&pending);
            len += pending.len() as u64;
            if head.len() < 64 {
                head.extend_from_slice(&pending[..pending.len().min(64 - head.len())]);
            }
            writer.write_all(&pending).await?;
            pending.clear();
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
    writer.shutdown().await?;
    Ok(Seen {
        client_hello,
        alpn,
        received_sha256: hasher.finalize().into(),
        received_len: len,
        head,
    })
}
