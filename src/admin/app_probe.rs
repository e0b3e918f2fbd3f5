//! Runs a rewritten kubelet probe against the app from inside the pod, the way the kubelet
//! would have (docs/operating.md#app-probes): a TCP connect, or an HTTP/1.1 GET whose status
//! must be 200..=399, within the probe's timeout.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{AppProbe, ProbeCheck};

/// Enough of the answer to hold a status line.
const STATUS_LINE_MAX: usize = 1024;

/// `Ok` when the app passes `probe`, else why not (the 503's body).
pub async fn run(probe: &AppProbe) -> Result<(), String> {
    match tokio::time::timeout(probe.timeout, check(&probe.check)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", probe.timeout)),
    }
}

async fn check(check: &ProbeCheck) -> Result<(), String> {
    match check {
        ProbeCheck::Tcp { host, port } => connect(SocketAddr::new(*host, *port)).await.map(drop),
        ProbeCheck::Http {
            host,
            port,
            path,
            headers,
        } => {
            let addr = SocketAddr::new(*host, *port);
            let mut stream = connect(addr).await?;
            let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/peerguard\r\n");
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("Connection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending the probe to {addr}: {e}"))?;
            let status = read_status(&mut stream)
                .await
                .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET {path} on {addr} answered {status}"))
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

/// The status code of `HTTP/1.x NNN ...`, read up to the end of the status line.
async fn read_status(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with(b"HTTP/1.") => std::str::from_utf8(code)
            .ok()
            .and_then(|code| code.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("no status code")),
        _ => Err(std::io::Error::other("not an HTTP/1 answer")),
    }
}
