//! forward: copy both ways between the client side and the app, with half-close preserved,
//! until both directions finish or the connection has been idle too long.
//!
//! Why not `tokio::io::copy_bidirectional`: it holds two heap buffers for the whole life of a
//! connection, and a sidecar holds thousands of idle connections. Here each poll reads into a
//! buffer on the stack and writes it on at once; only bytes the destination cannot take yet are
//! copied to the heap, and that spill is freed as soon as the direction goes quiet. An idle
//! connection therefore holds no data buffer at all, and the common case allocates nothing.
//!
//! Between two plain sockets (passthrough), a direction whose read fills the whole chunk is
//! carrying bulk: it switches to a kernel pipe (`splice`), and back when it goes quiet.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::inbound::cut::Cut;
use crate::inbound::splice::Pipe;
use crate::outcome::{End, Opening, Transferred};
use crate::tls::client_hello::starts_handshake_record;

/// Bytes read per poll from one side: the per-direction buffer bound (docs/operating.md#limits).
pub const CHUNK: usize = 32 * 1024;

/// Reads per direction before letting the other direction and other tasks run.
const READS_PER_POLL: usize = 16;

/// How long a connection must be quiet before its directions give their pipes back: long
/// enough that a bulk flow's pauses keep its pipe, short enough that an idle connection holds
/// none for long.
const PIPE_LINGER: Duration = Duration::from_millis(500);

/// One side of a forwarded connection. A plain TCP socket offers itself for splicing; a TLS
/// stream, whose bytes must pass through rustls, does not.
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin {
    fn socket(&self) -> Option<&TcpStream>;
}

impl Endpoint for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Endpoint for crate::inbound::tls_stream::ServerTls {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl<E: Endpoint + ?Sized> Endpoint for Box<E> {
    fn socket(&self) -> Option<&TcpStream> {
        (**self).socket()
    }
}

/// One direction's state. `spill` holds bytes read but not yet accepted by the destination;
/// `pipe` is there while the direction carries bulk between two sockets.
#[derive(Default)]
struct Direction {
    spill: Vec<u8>,
    spill_sent: usize,
    pipe: Option<Pipe>,
    read_eof: bool,
    shut_down: bool,
    bytes: u64,
    /// The first byte this direction carried.
    first_byte: Option<u8>,
}

/// Which side an I/O error came from, so the outcome can say who broke the connection.
enum Side {
    Source,
    Destination,
}

impl Direction {
    fn done(&self) -> bool {
        self.shut_down
    }

    /// Gives the pipe back if it holds nothing (a stalled destination keeps its bytes).
    fn release_empty_pipe(&mut self) {
        if self.pipe.as_ref().is_some_and(Pipe::is_empty) {
            self.pipe = None;
        }
    }

    /// Moves bytes from `src` to `dst` until one of them would block. `Ready(Ok)` once this
    /// direction has passed its EOF on; `moved` is set when any byte moved.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        scratch: &mut [MaybeUninit<u8>],
        moved: &mut bool,
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: Endpoint,
        W: Endpoint,
    {
        for _ in 0..READS_PER_POLL {
            while self.spill_sent < self.spill.len() {
                match Pin::new(&mut *dst).poll_write(cx, &self.spill[self.spill_sent..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((Side::Destination, io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => self.spill_sent += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Destination, e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.spill.clear();
            self.spill_sent = 0;
            if let (Some(pipe), Some(destination)) = (&mut self.pipe, dst.socket()) {
                match pipe.poll_drain(cx, destination) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Destination, e))),
                    Poll::Pending => return Poll::Pending,
                }
            }

            if self.read_eof {
                return match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => {
                        self.shut_down = true;
                        self.spill = Vec::new();
                        self.pipe = None;
                        Poll::Ready(Ok(()))
                    }
                    // The peer may already have gone; its half is finished either way.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                        self.shut_down = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err((Side::Destination, e))),
                    Poll::Pending => Poll::Pending,
                };
            }

            if let (Some(pipe), Some(source)) = (&mut self.pipe, src.socket()) {
                match pipe.poll_fill(cx, source) {
                    // A bulk flow is dry between its writes all the time; the pipe stays until
                    // the connection has been quiet for PIPE_LINGER (`poll_idle`).
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Source, e))),
                    Poll::Ready(Ok(0)) => self.read_eof = true,
                    Poll::Ready(Ok(n)) => {
                        *moved = true;
                        self.bytes += n as u64;
                    }
                }
                continue;
            }

            let chunk = scratch.len();
            let mut buf = ReadBuf::uninit(scratch);
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Pending => {
                    // Going quiet: push out anything the destination buffers (TLS records) and
                    // give the spill's memory back.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut *dst).poll_flush(cx) {
                        return Poll::Ready(Err((Side::Destination, e)));
                    }
                    self.spill = Vec::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Source, e))),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                self.read_eof = true;
                continue;
            }
            *moved = true;
            if self.first_byte.is_none() {
                self.first_byte = Some(data[0]);
            }
            self.bytes += data.len() as u64;
            // A direction that opened with a TLS record stays in copy mode (see `forward`).
            if data.len() == chunk && !self.first_byte.is_some_and(starts_handshake_record) {
                // Bulk. The pipe is filled only once the spill below has gone out, so the
                // order of the bytes holds.
                self.splice_if_possible(src, dst);
            }
            let mut written = 0;
            while written < data.len() {
                match Pin::new(&mut *dst).poll_write(cx, &data[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((Side::Destination, io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Destination, e))),
                    Poll::Pending => {
                        // Backpressure: keep the rest until the destination can take it.
                        self.spill.extend_from_slice(&data[written..]);
                        return Poll::Pending;
                    }
                }
            }
        }
        // Used our share; come back after others had theirs.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A read filled the whole chunk: bulk. Between two sockets, move the rest through a pipe.
    fn splice_if_possible<R: Endpoint, W: Endpoint>(&mut self, src: &R, dst: &W) {
        if src.socket().is_none() || dst.socket().is_none() {
            return;
        }
        match Pipe::new() {
            Ok(pipe) => self.pipe = Some(pipe),
            // Out of descriptors or pipe memory: copying still works.
            Err(e) => tracing::debug!(error = %e, "no pipe for splicing; copying instead"),
        }
    }
}

/// Copies `client` <-> `app` until both directions end, one of them fails, nothing moves for
/// `idle_timeout`, or `cut` is set (a drain's deadline). Each EOF is passed on as a write
/// shutdown (half-close). The cut is read, not waited on: the connection's task waits on it
/// once (`DataPath::serve`) and, woken, polls this again, which then ends with its bytes counted.
///
/// `replayed_first` is the first byte the client sent before forwarding began (the classified
/// bytes already replayed to the app), so that the client's direction knows how it opened. A
/// direction that opened with a TLS record moves bulk by copying, never through a pipe: passed
/// through to an app that terminates TLS itself, a spliced stream measured slower than a copied
/// one (load harness, `tls` phase: 6.3 against 8.6 Gbit/s, the app's core saturated), where
/// plaintext to a reading app gains (13.1 against 9.4 Gbit/s, half the proxy's CPU per GB).
///
/// A future written out by hand rather than an async block: the block kept a reference to
/// each of its locals for the `poll_fn` inside it, and an idle connection is as big as its task.
pub fn forward<'a, C, A>(
    client: &'a mut C,
    app: &'a mut A,
    idle_timeout: Duration,
    cut: &'a Cut,
    replayed_first: Option<u8>,
) -> Forward<'a, C, A>
where
    C: Endpoint,
    A: Endpoint,
{
    Forward {
        client,
        app,
        cut,
        idle_timeout,
        to_app: Direction {
            first_byte: replayed_first,
            ..Direction::default()
        },
        to_client: Direction::default(),
        opening: Opening::Unseen,
        last_activity: Instant::now(),
        // One timer, re-armed lazily from `last_activity` when it fires, instead of a timer
        // reset per read.
        idle: tokio::time::sleep(idle_timeout),
    }
}

pin_project! {
    /// The copying of one connection: see [`forward`].
    #[project = Copying]
    pub struct Forward<'a, C, A> {
        client: &'a mut C,
        app: &'a mut A,
        cut: &'a Cut,
        idle_timeout: Duration,
        to_app: Direction,
        to_client: Direction,
        opening: Opening,
        last_activity: Instant,
        #[pin]
        idle: Sleep,
    }
}

impl<C: Endpoint, A: Endpoint> Future for Forward<'_, C, A> {
    type Output = Transferred;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Transferred> {
        let mut this = self.project();
        let end = ready!(poll_end(cx, &mut this));
        Poll::Ready(Transferred {
            to_app: this.to_app.bytes,
            to_client: this.to_client.bytes,
            end,
            opening: *this.opening,
        })
    }
}

/// Pumps both directions; Ready with how the connection ended.
fn poll_end<C: Endpoint, A: Endpoint>(cx: &mut Context<'_>, this: &mut Copying<'_, '_, C, A>) -> Poll<End> {
    if this.cut.is_cut() {
        return Poll::Ready(End::Drained);
    }
    let (to_app, to_client) = (&mut *this.to_app, &mut *this.to_client);
    let mut scratch = [const { MaybeUninit::<u8>::uninit() }; CHUNK];
    let mut moved = false;
    if !to_app.done() {
        let pumped = to_app.poll_pump(cx, *this.client, *this.app, &mut scratch, &mut moved);
        note_opening(this.opening, to_app, to_client);
        if let Poll::Ready(Err((side, _))) = pumped {
            return Poll::Ready(match side {
                Side::Source => End::ClientError,
                Side::Destination => End::AppError,
            });
        }
    }
    if !to_client.done() {
        let pumped = to_client.poll_pump(cx, *this.app, *this.client, &mut scratch, &mut moved);
        note_opening(this.opening, to_app, to_client);
        if let Poll::Ready(Err((side, _))) = pumped {
            return Poll::Ready(match side {
                Side::Source => End::AppError,
                Side::Destination => End::ClientError,
            });
        }
    }
    if to_app.done() && to_client.done() {
        return Poll::Ready(End::Completed);
    }
    if moved {
        *this.last_activity = Instant::now();
    }
    poll_idle(
        cx,
        this.idle.as_mut(),
        *this.last_activity,
        *this.idle_timeout,
        [to_app, to_client],
    )
}

/// Sets `opening` from whichever direction carried a byte first, once. Called after each
/// direction is pumped, so that when both move in one poll the client's bytes count first.
fn note_opening(opening: &mut Opening, to_app: &Direction, to_client: &Direction) {
    if *opening != Opening::Unseen {
        return;
    }
    *opening = match (to_app.first_byte, to_client.first_byte) {
        (Some(first), _) if starts_handshake_record(first) => Opening::Tls,
        (Some(_), _) => Opening::Plaintext,
        (None, Some(_)) => Opening::ServerFirst,
        (None, None) => Opening::Unseen,
    };
}

/// Ready(IdleTimeout) once `idle_timeout` has passed since `last_activity`. On the way, once
/// the connection has been quiet for PIPE_LINGER, the directions give their empty pipes back;
/// the one timer serves both, re-armed lazily: for the pipes while any is held, else for the
/// idle timeout.
fn poll_idle(
    cx: &mut Context<'_>,
    mut idle: Pin<&mut Sleep>,
    last_activity: Instant,
    idle_timeout: Duration,
    mut directions: [&mut Direction; 2],
) -> Poll<End> {
    let holds_pipe = directions.iter().any(|direction| direction.pipe.is_some());
    if holds_pipe && idle.deadline() > last_activity + PIPE_LINGER {
        // A pipe was just made: wake in time to give it back.
        idle.as_mut().reset(last_activity + PIPE_LINGER);
    }
    while idle.as_mut().poll(cx).is_ready() {
        let now = Instant::now();
        if now >= last_activity + idle_timeout {
            return Poll::Ready(End::IdleTimeout);
        }
        if now >= last_activity + PIPE_LINGER {
            directions
                .iter_mut()
                .for_each(|direction| direction.release_empty_pipe());
        }
        let holds_pipe = directions.iter().any(|direction| direction.pipe.is_some());
        let next = if holds_pipe && now < last_activity + PIPE_LINGER {
            last_activity + PIPE_LINGER
        } else if holds_pipe {
            // Still holding bytes for a stalled destination: look again a linger later.
            now + PIPE_LINGER
        } else {
            last_activity + idle_timeout
        };
        idle.as_mut().reset(next.min(last_activity + idle_timeout));
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected loopback pair: (our end, the far end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A client and an app with `forward` running between them, and its task.
    async fn forwarding(idle_timeout: Duration) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Transferred>) {
        let (client, mut proxy_client_side) = tcp_pair().await;
        let (mut proxy_app_side, app) = tcp_pair().await;
        let proxy = tokio::spawn(async move {
            forward(
                &mut proxy_client_side,
                &mut proxy_app_side,
                idle_timeout,
                &Cut::default(),
                None,
            )
            .await
        });
        (client, app, proxy)
    }

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut client, mut app, proxy) = forwarding(Duration::from_secs(10)).await;

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"request",
            "the app sees the request and then the client's half-close"
        );

        // The client's half-close must not end the other direction.
        app.write_all(b"response after half-close").await.unwrap();
        app.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"response after half-close");

        let done = proxy.await.unwrap();
        assert_eq!(
            done,
            Transferred {
                to_app: 7,
                to_client: 25,
                end: End::Completed,
                opening: Opening::Plaintext,
            }
        );
    }

    /// Forwards one connection on which `client_sends` and then `app_sends` are written (each
    /// side then half-closes), and returns how the copy loop saw it open.
    async fn opening_of(client_sends: &[u8], app_sends: &[u8]) -> Opening {
        let (mut client, mut app, proxy) = forwarding(Duration::from_secs(10)).await;
        // The app speaks first when asked to: the client waits for its bytes.
        if !app_sends.is_empty() {
            app.write_all(app_sends).await.unwrap();
            let mut greeting = vec![0; app_sends.len()];
            client.read_exact(&mut greeting).await.unwrap();
        }
        client.write_all(client_sends).await.unwrap();
        client.shutdown().await.unwrap();
        app.shutdown().await.unwrap();
        let (mut rest, mut reply) = (Vec::new(), Vec::new());
        app.read_to_end(&mut rest).await.unwrap();
        client.read_to_end(&mut reply).await.unwrap();
        proxy.await.unwrap().opening
    }

    #[tokio::test]
    async fn the_copy_loop_tells_who_opened_and_with_what() {
        assert_eq!(opening_of(b"GET / HTTP/1.1\r\n", b"").await, Opening::Plaintext);
        assert_eq!(opening_of(&[22, 3, 1, 0, 5, 1], b"").await, Opening::Tls);
        assert_eq!(
            opening_of(b"EHLO me\r\n", b"220 smtp ready\r\n").await,
            Opening::ServerFirst
        );
        assert_eq!(opening_of(b"", b"").await, Opening::Unseen);
    }

    #[tokio::test]
    async fn an_idle_connection_times_out() {
        let (_client, mut proxy_client_side) = tcp_pair().await;
        let (mut proxy_app_side, _app) = tcp_pair().await;
        let done = tokio::time::timeout(
            Duration::from_secs(5),
            forward(
                &mut proxy_client_side,
                &mut proxy_app_side,
                Duration::from_millis(200),
                &Cut::default(),
                None,
            ),
        )
        .await
        .expect("idle timeout fires well before the test's own limit");
        assert_eq!(done.end, End::IdleTimeout);
    }

    #[tokio::test]
    async fn activity_keeps_the_idle_timer_away() {
        let (mut client, mut app, proxy) = forwarding(Duration::from_millis(300)).await;
        // Ten messages 100 ms apart: a full second, more than three idle periods.
        let mut one = [0u8; 1];
        for _ in 0..10 {
            client.write_all(b"x").await.unwrap();
            app.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !proxy.is_finished(),
            "traffic every 100 ms keeps a 300 ms idle timer from firing"
        );
        drop(client);
        drop(app);
        let done = proxy.await.unwrap();
        assert_eq!(done.to_app, 10);
    }

    #[tokio::test]
    async fn a_reset_app_ends_the_connection_as_an_app_error() {
        let (mut client, app, proxy) = forwarding(Duration::from_secs(10)).await;
        socket2::SockRef::from(&app).set_linger(Some(Duration::ZERO)).unwrap(); // close with RST
        drop(app);
        let done = tokio::time::timeout(Duration::from_secs(5), proxy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.end, End::AppError);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    }
}
