//! The app behind the proxies, on the harness's own core. A connection may open with the
//! app's own TLS (it terminates it, as an app with its own certificate does), then names its
//! mode in one byte: `SINK` discards everything and answers the byte count at EOF; `ECHO`
//! sends every byte back.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub const SINK: u8 = b'S';
pub const ECHO: u8 = b'E';
/// The first byte of a TLS handshake record: the client speaks the app's own TLS.
const TLS_HANDSHAKE: u8 = 22;
const SINK_BUFFER: usize = 256 * 1024;
const ECHO_BUFFER: usize = 16 * 1024;

/// Starts the app on a thread of its own with its own runtime, as a separate process would
/// be: the load generator and the app wait and wake independently, as real clients and apps do
/// (on the harness core, which the thread inherits). Returns where it listens.
pub fn start(tls: Arc<ServerConfig>) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let acceptor = TlsAcceptor::from(tls);
    std::thread::Builder::new()
        .name("app".into())
        .spawn(move || runtime.block_on(accept(listener, acceptor)))?;
    Ok(addr)
}

async fn accept(listener: std::net::TcpListener, acceptor: TlsAcceptor) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        // An error ends that connection only; the clients report what they saw.
        tokio::spawn(handle(stream, acceptor.clone()));
    }
}

async fn handle(stream: TcpStream, acceptor: TlsAcceptor) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut first = [0u8; 1];
    // One peek that waits for the first byte; the TLS acceptor then reads it for real.
    stream.peek(&mut first).await?;
    if first[0] == TLS_HANDSHAKE {
        serve(acceptor.accept(stream).await?).await
    } else {
        serve(stream).await
    }
}

pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> io::Result<()> {
    match stream.read_u8().await? {
        SINK => {
            let mut buf = vec![0u8; SINK_BUFFER];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            stream.write_u64(total).await?;
            stream.shutdown().await
        }
        ECHO => {
            let mut buf = vec![0u8; ECHO_BUFFER];
            loop {
                match stream.read(&mut buf).await? {
                    0 => return stream.shutdown().await,
                    n => {
                        stream.write_all(&buf[..n]).await?;
                        stream.flush().await?;
                    }
                }
            }
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode {other}"),
        )),
    }
}
