//! Clients as tests drive them: plaintext over TCP, and a rustls client that reports whose
//! certificate answered, what ALPN was negotiated, and the exact ClientHello it sent.
#![allow(dead_code)] // each test file uses its own subset of these helpers

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use peerguard::certs::IssuedCert;
use rand::{RngCore, SeedableRng};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

pub const STEP: Duration = Duration::from_secs(10);

/// A connection to `addr` from the loopback address `source` (any of 127.0.0.0/8), as from
/// another client host.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Sends `payload`, half-closes, and reads until the far end closes.
pub async fn plaintext_exchange(addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    plaintext_over(TcpStream::connect(addr).await?, payload).await
}

/// [`plaintext_exchange`] from the loopback address `source`.
pub async fn plaintext_exchange_from(source: IpAddr, addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    plaintext_over(connect_from(source, addr).await?, payload).await
}

async fn plaintext_over(mut stream: TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut reply)).await??;
    Ok(reply)
}

/// What a TLS client saw.
#[derive(Debug)]
pub struct TlsExchange {
    /// The end-entity certificate the server presented.
    pub server_cert: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    pub reply: Vec<u8>,
    /// The bytes of the ClientHello as this client wrote them.
    pub client_hello: Vec<u8>,
}

/// A TLS client that accepts any server certificate (signatures still checked) and remembers
/// it, so tests can assert *whose* certificate answered: the mesh's or the app's own.
pub fn client_config(alpn: &[&str], client_cert: Option<&IssuedCert>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(peerguard::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(super::pki::TestServerVerifier::any());
    super::pki::finish_client_config(builder, alpn, client_cert)
}

/// Handshakes with `config`, sends `payload`, half-closes, and reads the reply to EOF.
pub async fn tls_exchange(addr: SocketAddr, config: Arc<ClientConfig>, payload: &[u8]) -> io::Result<TlsExchange> {
    tls_over(TcpStream::connect(addr).await?, config, payload).await
}

/// [`tls_exchange`] from the loopback address `source`.
pub async fn tls_exchange_from(
    source: IpAddr,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    payload: &[u8],
) -> io::Result<TlsExchange> {
    tls_over(connect_from(source, addr).await?, config, payload).await
}

async fn tls_over(tcp: TcpStream, config: Arc<ClientConfig>, payload: &[u8]) -> io::Result<TlsExchange> {
    let written = Arc::new(Mutex::new(Vec::new()));
    let tapped = Tap {
        inner: tcp,
        written: written.clone(),
    };
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio::time::timeout(STEP, TlsConnector::from(config).connect(name, tapped)).await??;
    let client_hello = first_record_flight(&written.lock().unwrap());
    let (_, connection) = tls.get_ref();
    let server_cert = connection
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("server certificate");
    let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(payload).await?;
    tls.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut reply)).await??;
    Ok(TlsExchange {
        server_cert: server_cert.into_owned(),
        alpn,
        reply,
        client_hello,
    })
}

/// The ClientHello: the handshake records at the start of what the client wrote.
fn first_record_flight(written: &[u8]) -> Vec<u8> {
    let mut end = 0;
    while end + 5 <= written.len() && written[end] == 22 {
        let len = u16::from_be_bytes([written[end + 3], written[end + 4]]) as usize;
        end += 5 + len;
        if matches!(
            peerguard::tls::client_hello::parse(&written[..end.min(written.len())]),
            peerguard::tls::client_hello::HelloParse::Complete(_)
        ) {
            break;
        }
    }
    written[..end.min(written.len())].to_vec()
}

/// Streams `len` pseudo-random bytes through `stream` while reading the echo back; returns
/// (digest sent, digest received, bytes received). The write side half-closes at the end.
pub async fn stream_echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    len: usize,
    seed: u64,
) -> ([u8; 32], [u8; 32], u64) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let send = async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill_bytes(&mut chunk[..n]);
            hasher.update(&chunk[..n]);
            writer.write_all(&chunk[..n]).await.expect("send");
            left -= n;
        }
        writer.shutdown().await.expect("half-close");
        <[u8; 32]>::from(hasher.finalize())
    };
    let receive = async move {
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut chunk).await.expect("receive");
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
            total += n as u64;
        }
        (<[u8; 32]>::from(hasher.finalize()), total)
    };
    let (sent, (received, total)) =
        tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(send, receive) })
            .await
            .expect("the stream finished within 120 s");
    (sent, received, total)
}

/// Records every byte written through it.
struct Tap<S> {
    inner: S,
    written: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
