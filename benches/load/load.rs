//! The load generator: clients that connect plain, with the app's own TLS or as a mesh peer,
//! and the four kinds of load (streaming, request/response over one or many connections,
//! new connections or handshakes, idle connections).
//! Every loop stops at its deadline or its count, whichever comes first, and every wait on
//! the network has a timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
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
/// What a new connection sends after the echo mode byte and sees come back: 4 bytes, so that
/// the first write (mode byte included) is 5 bytes, the least on which nginx's `ssl_preread`
/// tells plaintext from TLS (it waits for a full TLS record header, up to its preread timeout).
const CONFIRM: [u8; 4] = *b"ping";
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

    /// Opens an echo connection and sees `CONFIRM` come back: the whole path works, and with
    /// TLS 1.3 the server has accepted the client certificate.
    pub async fn open_confirmed(&self, addr: SocketAddr, security: Security) -> io::Result<Box<dyn Io>> {
        let mut conn = self.open(addr, security).await?;
        timed(async {
            let mut first = [ECHO; 1 + CONFIRM.len()];
            first[1..].copy_from_slice(&CONFIRM);
            conn.write_all(&first).await?;
            conn.flush().await?;
            let mut echoed = [0u8; CONFIRM.len()];
            conn.read_exact(&mut echoed).await?;
            if echoed == CONFIRM {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the echo differs from what was sent",
                ))
            }
        })
        .await?;
        Ok(conn)
    }
}

/// What a streaming load delivered.
pub struct Streamed {
    pub gbit_per_second: f64,
    /// Bytes the app counted.
    pub bytes: u64,
}

/// One connection writing to a discarding app for `time`; the app's byte count at EOF gives
/// what arrived.
pub async fn stream(
    connector: &Connector,
    addr: SocketAddr,
    security: Security,
    time: Duration,
) -> io::Result<Streamed> {
    let mut conn = connector.open(addr, security).await?;
    conn.write_all(&[SINK]).await?;
    let chunk = vec![0xA5u8; STREAM_WRITE];
    let started = Instant::now();
    while started.elapsed() < time {
        timed(conn.write_all(&chunk)).await?;
    }
    timed(conn.shutdown()).await?;
    let bytes = timed(conn.read_u64()).await?;
    Ok(Streamed {
        gbit_per_second: bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9,
        bytes,
    })
}

/// What a request/response load gave.
pub struct RoundTrips {
    /// Latency over every timed round trip of every connection, µs.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Timed round trips per second, all connections together.
    pub per_second: f64,
    /// Every round trip made, warm-up included: what the proxy's CPU over the phase served.
    pub total: u64,
}

/// 128 B request/response round trips, one at a time on each of `connections` connections at
/// once. Every connection warms up first; timing starts when all have.
pub async fn request_response(
    connector: &Arc<Connector>,
    addr: SocketAddr,
    security: Security,
    connections: usize,
    time: Duration,
) -> io::Result<RoundTrips> {
    let warmed_up = Arc::new(Barrier::new(connections));
    let per_connection = fan_out(connections, |_| {
        let connector = connector.clone();
        let warmed_up = warmed_up.clone();
        async move {
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
            // A connection that failed ends the phase (fan_out aborts the rest), so this wait
            // is bounded by the others' warm-up.
            timed(async { Ok(warmed_up.wait().await) }).await?;
            let mut samples = Vec::new();
            let started = Instant::now();
            while started.elapsed() < time && samples.len() < MAX_ROUND_TRIPS {
                let sent = Instant::now();
                round_trip().await?;
                samples.push(sent.elapsed());
            }
            Ok((samples, started.elapsed()))
        }
    })
    .await?;
    let longest = per_connection.iter().map(|(_, took)| *took).max().unwrap_or_default();
    let mut samples: Vec<Duration> = per_connection.into_iter().flat_map(|(samples, _)| samples).collect();
    samples.sort_unstable();
    Ok(RoundTrips {
        p50_us: percentile_us(&samples, 0.50),
        p99_us: percentile_us(&samples, 0.99),
        per_second: samples.len() as f64 / longest.as_secs_f64().max(1e-3),
        total: (samples.len() + connections * WARM_UP_ROUND_TRIPS) as u64,
    })
}

fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
    sorted.get(index).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// Connections completed, and how many per second.
pub struct Completed {
    pub count: u64,
    pub per_second: f64,
}

/// New connections from `clients` concurrent clients, each connecting (with a full handshake,
/// no resumption, for `Security::Mesh`), seeing 4 bytes echoed and closing, over and over.
pub async fn connections(
    connector: &Arc<Connector>,
    addr: SocketAddr,
    security: Security,
    clients: usize,
    time: Duration,
) -> io::Result<Completed> {
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
    let count = counts.iter().sum::<u64>();
    Ok(Completed {
        count,
        per_second: count as f64 / started.elapsed().as_secs_f64(),
    })
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
