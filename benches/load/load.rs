//! The load generator: clients that connect plain, with the app's own TLS or as a mesh peer,
//! and the four kinds of load (streaming, request/response, handshakes, idle connections).
//! Every loop stops at its deadline or its count, whichever comes first, and every wait on
//! the network has a timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::app::{ECHO, SINK};
use crate::pki::{app_server_name, mesh_server_name, Pki};

/// Longest any one connect, handshake or reply may take before the phase fails.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per write when streaming.
const STREAM_WRITE: usize = 64 * 1024;
/// Request and response size of the request/response load.
const MESSAGE: usize = 128;
/// Round trips before timing starts (connection set up, caches warm).
const WARM_UP_ROUND_TRIPS: usize = 200;
/// Count bounds, beyond the time bound.
const MAX_ROUND_TRIPS: usize = 2_000_000;
const MAX_HANDSHAKES_PER_CLIENT: u64 = 1_000_000;

/// How a client speaks to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    /// The app's own TLS (ALPN h2): a PERMISSIVE proxy passes it through.
    AppTls,
    /// Mesh mTLS (ALPN istio, client certificate): the proxy terminates it.
    Mesh,
}

/// A client connection of any kind.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Connector {
    app_tls: TlsConnector,
    mesh: TlsConnector,
}

impl Connector {
    pub fn new(pki: &Pki) -> Arc<Connector> {
        Arc::new(Connector {
            app_tls: TlsConnector::from(pki.app_client.clone()),
            mesh: TlsConnector::from(pki.mesh_client.clone()),
        })
    }

    /// Connects and, for TLS, completes the handshake.
    pub async fn open(&self, addr: SocketAddr, security: Security) -> io::Result<Box<dyn Io>> {
        timed(async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok::<Box<dyn Io>, io::Error>(match security {
                Security::Plain => Box::new(tcp),
                Security::AppTls => Box::new(self.app_tls.connect(app_server_name(), tcp).await?),
                Security::Mesh => Box::new(self.mesh.connect(mesh_server_name(), tcp).await?),
            })
        })
        .await
    }

    /// Opens an echo connection and sees one byte come back: the whole path works, and with
    /// TLS 1.3 the server has accepted the client certificate.
    pub async fn open_confirmed(&self, addr: SocketAddr, security: Security) -> io::Result<Box<dyn Io>> {
        let mut conn = self.open(addr, security).await?;
        timed(async {
            conn.write_all(&[ECHO, 1]).await?;
            conn.flush().await?;
            conn.read_u8().await
        })
        .await?;
        Ok(conn)
    }
}

/// One connection writing to a discarding app for `time`; the app's byte count at EOF gives
/// what arrived. Gbit/s.
pub async fn stream(connector: &Connector, addr: SocketAddr, security: Security, time: Duration) -> io::Result<f64> {
    let mut conn = connector.open(addr, security).await?;
    conn.write_all(&[SINK]).await?;
    let chunk = vec![0xA5u8; STREAM_WRITE];
    let started = Instant::now();
    while started.elapsed() < time {
        timed(conn.write_all(&chunk)).await?;
    }
    timed(conn.shutdown()).await?;
    let received = timed(conn.read_u64()).await?;
    Ok(received as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// Latency of 128 B request/response round trips over one connection: (p50, p99) in µs.
pub async fn request_response(
    connector: &Connector,
    addr: SocketAddr,
    security: Security,
    time: Duration,
) -> io::Result<(f64, f64)> {
    let mut conn = connector.open(addr, security).await?;
    conn.write_all(&[ECHO]).await?;
    let request = [0x5Au8; MESSAGE];
    let mut response = [0u8; MESSAGE];
    let mut round_trip = async || {
        conn.write_all(&request).await?;
        conn.flush().await?;
        timed(conn.read_exact(&mut response)).await.map(drop)
    };
    for _ in 0..WARM_UP_ROUND_TRIPS {
        round_trip().await?;
    }
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < time && samples.len() < MAX_ROUND_TRIPS {
        let sent = Instant::now();
        round_trip().await?;
        samples.push(sent.elapsed());
    }
    samples.sort_unstable();
    Ok((percentile_us(&samples, 0.50), percentile_us(&samples, 0.99)))
}

fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
    sorted.get(index).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// New connections per second from `clients` concurrent clients, each connecting (with a full
/// handshake, no resumption, for `Security::Mesh`), seeing one echoed byte and closing, over
/// and over.
pub async fn connections(
    connector: &Arc<Connector>,
    addr: SocketAddr,
    security: Security,
    clients: usize,
    time: Duration,
) -> io::Result<f64> {
    let started = Instant::now();
    let deadline = started + time;
    let counts = fan_out(clients, |_| {
        let connector = connector.clone();
        async move {
            let mut done = 0u64;
            while Instant::now() < deadline && done < MAX_HANDSHAKES_PER_CLIENT {
                connector.open_confirmed(addr, security).await?;
                done += 1;
            }
            Ok(done)
        }
    })
    .await?;
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
}

/// Opens `count` confirmed connections with `clients` concurrent openers and returns them open.
pub async fn hold_idle(
    connector: &Arc<Connector>,
    addr: SocketAddr,
    security: Security,
    count: usize,
    clients: usize,
) -> io::Result<Vec<Box<dyn Io>>> {
    let held = fan_out(clients, |worker| {
        let connector = connector.clone();
        let share = count / clients + usize::from(worker < count % clients);
        async move {
            let mut held = Vec::with_capacity(share);
            for _ in 0..share {
                held.push(connector.open_confirmed(addr, security).await?);
            }
            Ok(held)
        }
    })
    .await?;
    Ok(held.into_iter().flatten().collect())
}

/// Runs `workers` tasks and gathers their results; the first error fails the whole.
async fn fan_out<T, F, Fut>(workers: usize, work: F) -> io::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut set = JoinSet::new();
    for worker in 0..workers {
        set.spawn(work(worker));
    }
    let mut results = Vec::with_capacity(workers);
    while let Some(joined) = set.join_next().await {
        results.push(joined.map_err(io::Error::other)??);
    }
    Ok(results)
}

async fn timed<T>(op: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(OP_TIMEOUT, op).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no progress within the timeout",
        ))
    })
}
