//! The demo's application: on each port it accepts plaintext and its own TLS (a certificate
//! that is not the mesh's), answers HTTP requests with a line saying how it was reached, and
//! echoes anything else back. It is what a real app behind a PERMISSIVE sidecar looks like.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::demo::prefixed::PrefixedIo;

/// Largest HTTP request head the app reads before answering.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves every listener until the process ends.
pub fn spawn(listeners: Vec<TcpListener>, own_tls: Arc<rustls::ServerConfig>) {
    for listener in listeners {
        let acceptor = TlsAcceptor::from(own_tls.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                tokio::spawn(async move {
                    if let Err(e) = serve(client, port, acceptor).await {
                        tracing::debug!(port, error = %e, "echo app connection ended");
                    }
                });
            }
        });
    }
}

async fn serve(mut client: TcpStream, port: u16, acceptor: TlsAcceptor) -> std::io::Result<()> {
    let mut first = vec![0u8; 1];
    if client.read(&mut first).await? == 0 {
        return Ok(());
    }
    if first[0] == 22 {
        let tls = acceptor.accept(PrefixedIo::new(first, client)).await?;
        let how = match tls.get_ref().1.alpn_protocol() {
            Some(alpn) => format!("the app's own TLS (ALPN {})", String::from_utf8_lossy(alpn)),
            None => "the app's own TLS".to_string(),
        };
        answer(tls, Vec::new(), port, &how).await
    } else {
        answer(client, first, port, "plaintext").await
    }
}

/// HTTP requests get a one-line answer; any other bytes are echoed back until EOF.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut seen: Vec<u8>,
    port: u16,
    how: &str,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    while seen.len() < 4 {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    let is_http = [&b"GET "[..], b"POST", b"HEAD", b"PUT ", b"DELE"]
        .iter()
        .any(|m| seen.starts_with(m));
    if !is_http {
        let (mut reader, mut writer) = tokio::io::split(io);
        writer.write_all(&seen).await?;
        tokio::io::copy(&mut reader, &mut writer).await?;
        return writer.shutdown().await;
    }
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < MAX_REQUEST_HEAD {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    let body = format!("echo app on port {port}: you reached me over {how}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    io.write_all(response.as_bytes()).await?;
    io.shutdown().await
}
