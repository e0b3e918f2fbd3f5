//! tls_stream: a terminated mTLS connection that holds no buffer while it is idle.
//!
//! tokio-rustls drives rustls' buffered API, whose receive buffer stays at 4 KiB for the life
//! of a connection once anything has been read. A sidecar holds thousands of idle mTLS
//! connections, so here rustls' unbuffered API is driven instead: the stream owns the bytes
//! in flight and gives each buffer back as soon as it is empty and the direction goes quiet.
//!
//! One rustls connection serves both directions, and rustls decides what comes next
//! ([`ConnectionState`]): records to decrypt, handshake or alert records to send, or room to
//! encrypt. [`ServerTls::advance`] is the one place that answers it; reading, writing, the
//! handshake and close_notify each ask it for what they need.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The first read of a burst: room for a request or a handshake flight. A read that fills
/// the buffer doubles the next one, up to [`MAX_READ`], so bulk flows read whole records.
const FIRST_READ: usize = 4 * 1024;

/// Less room than this left in the buffer, and it grows before the next read.
const MIN_READ: usize = 1024;

/// The most one read from the socket takes: two full TLS records.
const MAX_READ: usize = 2 * MAX_RECORD;

/// A TLS record on the wire at its largest: 16 KiB of payload plus header and AEAD expansion
/// (RFC 8446 section 5.2 allows 256 bytes of it).
const MAX_RECORD: usize = 5 + 16 * 1024 + 256;

/// Received bytes kept while rustls waits for the rest of a message: a handshake message may
/// span records up to rustls' 64 KiB limit. A peer that sends more without completing one is
/// cut off rather than buffered without end.
const MAX_INCOMING: usize = 0x1_0000 + 2 * MAX_RECORD;

/// Plaintext encrypted per write; a larger write is taken in parts.
const MAX_WRITE: usize = 64 * 1024;

/// Room for a close_notify alert (and a pending KeyUpdate before it).
const CONTROL_RECORDS: usize = 256;

/// The server side of a terminated mTLS connection.
pub struct ServerTls {
    conn: UnbufferedServerConnection,
    tcp: TcpStream,
    /// Received TLS bytes rustls has not consumed yet: at most a partial record once
    /// [`ServerTls::advance`] has run. Freed when empty and the peer is quiet.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader had no room for yet, from `pending_read` on.
    pending: Vec<u8>,
    pending_read: usize,
    /// Encrypted bytes not yet written to the socket, from `outgoing_sent` on. Freed once sent.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The socket reached end of stream.
    tcp_eof: bool,
    /// The peer's close_notify arrived: reads end here.
    peer_closed: bool,
    /// Our close_notify is queued: writes end here.
    close_notify_queued: bool,
}

/// What [`ServerTls::advance`] does once rustls will take application data.
enum WhenWritable<'d> {
    /// Nothing: stop there.
    Stop,
    /// Encrypt these bytes.
    Encrypt(&'d [u8]),
    /// Queue close_notify.
    CloseNotify,
}

/// Where [`ServerTls::advance`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Advanced {
    /// rustls needs more bytes from the peer, or has nothing to do.
    NeedsInput,
    /// The read buffer is full.
    ReadBufFull,
    /// The requested write was encrypted into `outgoing`.
    Written,
    /// Both sides have sent close_notify.
    Closed,
}

impl ServerTls {
    /// Runs the server handshake on `tcp` with `config`, starting from `prefix`, the bytes
    /// already read from it (the ClientHello). Errors are rustls errors inside an
    /// `io::Error` of kind `InvalidData`, as tokio-rustls reports them, after the alert that
    /// tells the client why has been offered to the socket.
    pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream, prefix: Vec<u8>) -> io::Result<ServerTls> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
        let mut tls = ServerTls {
            conn,
            tcp,
            incoming: prefix,
            pending: Vec::new(),
            pending_read: 0,
            outgoing: Vec::new(),
            outgoing_sent: 0,
            tcp_eof: false,
            peer_closed: false,
            close_notify_queued: false,
        };
        poll_fn(|cx| tls.poll_handshake(cx)).await?;
        Ok(tls)
    }

    /// What the handshake established: peer certificates, ALPN, handshake kind.
    pub fn connection(&self) -> &CommonState {
        &self.conn
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.advance(None, WhenWritable::Stop)?;
            ready!(self.poll_send(cx))?;
            // Past its Finished a TLS 1.3 server may already write, but the handshake is not
            // over until the client's certificate and Finished have been verified.
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof")));
            }
        }
    }

    /// After a fatal error rustls has queued an alert that tells the peer why; one
    /// non-blocking attempt to send it, as the error is what the caller acts on.
    fn offer_alert(&mut self) {
        // rustls hands out queued records before it deframes again, and it refers to the
        // buffer by position, so it is given the same one (its `discard` already applied).
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let more = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.outgoing, |out| encode.encode(out)).is_ok()
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    true
                }
                _ => false,
            };
            self.incoming.drain(..discard);
            if !more {
                break;
            }
        }
        let _ = self.tcp.try_write(&self.outgoing[self.outgoing_sent..]);
    }

    /// Lets rustls process the buffered input until it needs more bytes from the peer, or
    /// until `read` is full. Decrypted data goes into `read` while it has room and into
    /// `pending` otherwise; records rustls wants sent go into `outgoing`. Once rustls would
    /// take application data, `writable` says what to hand it.
    fn advance(&mut self, mut read: Option<&mut ReadBuf<'_>>, writable: WhenWritable<'_>) -> io::Result<Advanced> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.offer_alert();
                    return Err(invalid_data(e));
                }
            };
            let mut stop = None;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(len) = traffic.peek_len() {
                        let room = read.as_ref().map_or(0, |buf| buf.remaining());
                        let has_data = read.as_ref().is_some_and(|buf| !buf.filled().is_empty());
                        if read.is_some() && len.get() > room && has_data {
                            // Leave the record with rustls for the next read.
                            stop = Some(Advanced::ReadBufFull);
                            break;
                        }
                        let Some(record) = traffic.next_record() else { break };
                        let record = record.map_err(invalid_data)?;
                        let taken = record.payload.len().min(room);
                        if let Some(buf) = read.as_mut() {
                            buf.put_slice(&record.payload[..taken]);
                        }
                        self.pending.extend_from_slice(&record.payload[taken..]);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, |out| encode.encode(out))?;
                }
                // The records stay in `outgoing` until sent; every caller sends before it waits.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    stop = Some(Advanced::Closed);
                }
                ConnectionState::BlockedHandshake => stop = Some(Advanced::NeedsInput),
                ConnectionState::WriteTraffic(mut traffic) => {
                    stop = Some(match writable {
                        WhenWritable::Stop => Advanced::NeedsInput,
                        WhenWritable::Encrypt(data) => {
                            encrypt_into(&mut self.outgoing, data, |data, out| traffic.encrypt(data, out))?;
                            Advanced::Written
                        }
                        WhenWritable::CloseNotify => {
                            encrypt_into(&mut self.outgoing, &[], |_, out| traffic.queue_close_notify(out))?;
                            Advanced::Written
                        }
                    });
                }
                // Early data is never accepted (max_early_data_size stays 0).
                _ => return Err(invalid_data("unexpected TLS connection state")),
            }
            self.incoming.drain(..discard);
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
    }

    /// Writes `outgoing` to the socket; Ready once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.outgoing_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += n;
        }
        self.outgoing = Vec::new();
        self.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads from the socket onto `incoming`; Ready(0) at end of stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(invalid_data("TLS message too large")));
        }
        if self.incoming.capacity() - self.incoming.len() < MIN_READ {
            let next = (self.incoming.capacity() * 2).clamp(FIRST_READ, MAX_READ);
            self.incoming.reserve_exact(next);
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read_buf(&mut self.incoming) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
                Ok(0) => {
                    self.tcp_eof = true;
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
            }
        }
    }

    /// Hands out decrypted bytes kept from an earlier record.
    fn take_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = &self.pending[self.pending_read..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pending_read += n;
        if self.pending_read == self.pending.len() {
            self.pending = Vec::new();
            self.pending_read = 0;
        }
    }
}

impl AsyncRead for ServerTls {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.pending_read < this.pending.len() {
            this.take_pending(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            this.advance(Some(buf), WhenWritable::Stop)?;
            // Whatever rustls queued on the way (a KeyUpdate reply) goes out now if the socket
            // takes it; if not, the next write or flush sends it first.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before || this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.tcp_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            match this.poll_receive(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Quiet: an idle connection keeps no receive buffer.
                    if this.incoming.is_empty() {
                        this.incoming = Vec::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for ServerTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Earlier records first: at most one write's worth of ciphertext is held.
        ready!(this.poll_send(cx))?;
        if this.close_notify_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let had_pending = this.pending_read < this.pending.len();
        if this.advance(None, WhenWritable::Encrypt(data))? != Advanced::Written {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !had_pending && this.pending_read < this.pending.len() {
            // Records buffered for the reader were decrypted here: make sure it comes back.
            cx.waker().wake_by_ref();
        }
        // The bytes are ours now; a full socket send buffer only delays them.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    /// Sends close_notify, then shuts the socket's write half: the peer sees a clean end of
    /// this direction and may go on sending.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_notify_queued {
            ready!(this.poll_send(cx))?;
            if this.advance(None, WhenWritable::CloseNotify)? != Advanced::Written {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            this.close_notify_queued = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Appends what `encode` writes to `outgoing`, growing it to the size rustls asks for.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    let mut room = CONTROL_RECORDS;
    loop {
        let start = outgoing.len();
        outgoing.resize(start + room, 0);
        match encode(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.truncate(start);
                room = required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(invalid_data(e));
            }
        }
    }
}

/// Appends the records `encrypt` makes of `data` to `outgoing`, growing it to the size rustls
/// asks for.
fn encrypt_into(
    outgoing: &mut Vec<u8>,
    data: &[u8],
    mut encrypt: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    // Each record adds a header and the AEAD's tag; a KeyUpdate may come first.
    let records = data.len().div_ceil(16 * 1024);
    let mut room = data.len() + records * (MAX_RECORD - 16 * 1024) + CONTROL_RECORDS;
    loop {
        let start = outgoing.len();
        outgoing.resize(start + room, 0);
        match encrypt(data, &mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.truncate(start);
                room = required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(invalid_data(e));
            }
        }
    }
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}
