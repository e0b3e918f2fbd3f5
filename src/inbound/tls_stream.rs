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

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::inbound::unread::Unread;

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
    /// Decrypted bytes the reader had no room for yet.
    pending: Unread,
    /// Encrypted bytes not yet written to the socket, from `outgoing_sent` on. Freed once sent.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The socket reached end of stream.
    tcp_eof: bool,
    /// The peer's close_notify arrived: reads end here.
    peer_closed: bool,
    /// Our close_notify is queued: writes end here.
    close_notify_queued: bool,
    /// rustls reported a fatal error: the connection is over.
    failed: bool,
}

/// What [`ServerTls::advance`] does once rustls will take application data.
#[derive(Clone, Copy)]
enum WhenWritable<'d> {
    /// Nothing: stop there.
    Stop,
    /// Encrypt these bytes.
    Encrypt(&'d [u8]),
    /// Queue close_notify.
    CloseNotify,
}

/// Where [`ServerTls::advance`] stopped. Whether it read anything, the caller sees in its
/// buffer, and whether the peer closed in `peer_closed`.
#[derive(Debug, PartialEq, Eq)]
enum Advanced {
    /// Nothing more to do without the peer: rustls needs more bytes, the read buffer is full,
    /// or the connection is closed both ways.
    Waiting,
    /// The requested write was encrypted into `outgoing`.
    Written,
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
            pending: Unread::default(),
            outgoing: Vec::new(),
            outgoing_sent: 0,
            tcp_eof: false,
            peer_closed: false,
            close_notify_queued: false,
            failed: false,
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
        // One call only: rustls hands out a queued record before it deframes, and deframing
        // the bytes that failed again would fail again. So only the first queued record goes:
        // should a KeyUpdate reply be waiting for our next write, it goes instead of the alert.
        // rustls refers to the buffer by position, so it is given the same one (with its
        // `discard` applied).
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            if append_records(&mut self.outgoing, CONTROL_RECORDS, |out| encode.encode(out)).is_ok() {
                if let Ok(written) = self.tcp.try_write(&self.outgoing[self.outgoing_sent..]) {
                    self.outgoing_sent += written;
                }
            }
        }
    }

    /// Lets rustls process the buffered input until it needs more bytes from the peer, or
    /// until `read` is full. Decrypted data goes into `read` while it has room and into
    /// `pending` otherwise; records rustls wants sent go into `outgoing`. Once rustls would
    /// take application data, `writable` says what to hand it. Any error is final.
    fn advance(&mut self, mut read: Option<&mut ReadBuf<'_>>, writable: WhenWritable<'_>) -> io::Result<Advanced> {
        if self.failed {
            // rustls would deframe the bytes that failed once more.
            return Err(invalid_data("the TLS connection failed earlier"));
        }
        let read_start = read.as_ref().map_or(0, |buf| buf.filled().len());
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let (handled, alert_queued) = match state {
                Ok(state) => {
                    let mut out = Output {
                        read: read.as_deref_mut(),
                        read_start,
                        pending: &mut self.pending,
                        outgoing: &mut self.outgoing,
                        peer_closed: &mut self.peer_closed,
                    };
                    (out.handle(state, writable), false)
                }
                // rustls has queued the alert that tells the peer why.
                Err(e) => (Err(invalid_data(e)), true),
            };
            // Before anything else, and on errors too: the next call must not see these bytes.
            self.incoming.drain(..discard);
            match handled {
                Ok(Some(stop)) => return Ok(stop),
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    if alert_queued {
                        self.offer_alert();
                    }
                    return Err(e);
                }
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
}

impl AsyncRead for ServerTls {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.pending.is_empty() {
            this.pending.take_into(buf);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            this.advance(Some(buf), WhenWritable::Stop)?;
            // Whatever rustls queued on the way (a warning alert) goes out now if the socket
            // takes it; if not, the next write or flush sends it first. After our own
            // close_notify the write half may be shut, and reading goes on regardless.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                if !this.close_notify_queued {
                    return Poll::Ready(Err(e));
                }
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                // rustls reads nothing after close_notify: the receive buffer can go.
                this.incoming = Vec::new();
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
        let had_pending = !this.pending.is_empty();
        if this.advance(None, WhenWritable::Encrypt(data))? != Advanced::Written {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !had_pending && !this.pending.is_empty() {
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

/// Where [`ServerTls::advance`] puts what rustls hands out: the fields of the stream that
/// the state, which borrows the connection and the received bytes, leaves free.
struct Output<'o, 'b> {
    read: Option<&'o mut ReadBuf<'b>>,
    /// How much of `read` was filled before this advance: only bytes added since count.
    read_start: usize,
    pending: &'o mut Unread,
    outgoing: &'o mut Vec<u8>,
    peer_closed: &'o mut bool,
}

impl Output<'_, '_> {
    /// Acts on one state; Some once [`ServerTls::advance`] should stop there.
    fn handle(
        &mut self,
        state: ConnectionState<'_, '_, ServerConnectionData>,
        writable: WhenWritable<'_>,
    ) -> io::Result<Option<Advanced>> {
        Ok(match state {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(len) = traffic.peek_len() {
                    let room = self.read.as_ref().map_or(0, |buf| buf.remaining());
                    let added = self.read.as_ref().map_or(0, |buf| buf.filled().len() - self.read_start);
                    if self.read.is_some() && len.get() > room && added > 0 {
                        // Leave the record with rustls for the next read.
                        return Ok(Some(Advanced::Waiting));
                    }
                    let Some(record) = traffic.next_record() else { break };
                    let record = record.map_err(invalid_data)?;
                    let taken = record.payload.len().min(room);
                    if let Some(buf) = self.read.as_mut() {
                        buf.put_slice(&record.payload[..taken]);
                    }
                    self.pending.extend_from_slice(&record.payload[taken..]);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                append_records(self.outgoing, CONTROL_RECORDS, |out| encode.encode(out))?;
                None
            }
            // The records stay in `outgoing` until sent; every caller sends before it waits.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::PeerClosed => {
                *self.peer_closed = true;
                None
            }
            ConnectionState::Closed => {
                *self.peer_closed = true;
                Some(Advanced::Waiting)
            }
            ConnectionState::BlockedHandshake => Some(Advanced::Waiting),
            ConnectionState::WriteTraffic(mut traffic) => Some(match writable {
                WhenWritable::Stop => Advanced::Waiting,
                WhenWritable::Encrypt(data) => {
                    append_records(self.outgoing, room_for(data), |out| traffic.encrypt(data, out))?;
                    Advanced::Written
                }
                WhenWritable::CloseNotify => {
                    append_records(self.outgoing, CONTROL_RECORDS, |out| traffic.queue_close_notify(out))?;
                    Advanced::Written
                }
            }),
            // Early data is never accepted (max_early_data_size stays 0).
            _ => return Err(invalid_data("unexpected TLS connection state")),
        })
    }
}

/// An error of rustls' unbuffered API that may only mean "more room, please".
trait MayNeedRoom: std::error::Error + Send + Sync + 'static {
    /// The room asked for, if that is all this error says.
    fn required_size(&self) -> Option<usize>;
}

impl MayNeedRoom for EncodeError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
            _ => None,
        }
    }
}

impl MayNeedRoom for EncryptError {
    fn required_size(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
            _ => None,
        }
    }
}

/// Appends to `outgoing` what `write` puts into the room it is given, `room` bytes at first,
/// then as much as rustls asks for.
fn append_records<E: MayNeedRoom>(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    loop {
        let start = outgoing.len();
        outgoing.resize(start + room, 0);
        let written = write(&mut outgoing[start..]);
        outgoing.truncate(start + *written.as_ref().unwrap_or(&0));
        match written {
            Ok(_) => return Ok(()),
            Err(e) => room = e.required_size().ok_or_else(|| invalid_data(e))?,
        }
    }
}

/// Room for the records of `data`: each adds a header and the AEAD's tag, and a KeyUpdate may
/// come first.
fn room_for(data: &[u8]) -> usize {
    let records = data.len().div_ceil(16 * 1024);
    data.len() + records * (MAX_RECORD - 16 * 1024) + CONTROL_RECORDS
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A rustls client connected to a [`ServerTls`] over loopback (server authentication only:
    /// the stream is the same whatever the configuration asks of the client).
    async fn connected() -> (TlsStream<TcpStream>, ServerTls) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = CertificateDer::from(issued.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(address).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            ServerTls::accept(Arc::new(server), tcp, Vec::new()).await.unwrap()
        };
        tokio::join!(connect, accept)
    }

    /// Heap bytes the stream holds for data in flight.
    fn held(tls: &ServerTls) -> usize {
        tls.incoming.capacity() + tls.pending.capacity() + tls.outgoing.capacity()
    }

    /// Polls `future` once: whether it was still pending.
    async fn is_pending(future: impl Future) -> bool {
        let mut future = std::pin::pin!(future);
        poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending())).await
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_bulk_flow_each_way_then_quiet_leaves_no_buffers() {
        let (mut client, mut server) = connected().await;
        let upload = pattern(4 << 20);
        let download = pattern(3 << 20);

        let sent = upload.clone();
        let client_side = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut received = vec![0; 3 << 20];
            client.read_exact(&mut received).await.unwrap();
            (client, received)
        });
        // Reads smaller than a record, so decrypted bytes wait in `pending` on the way.
        let mut received = Vec::new();
        let mut chunk = [0; 1000];
        let mut largest_held = 0;
        while received.len() < upload.len() {
            let n = server.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "end of stream before all the upload arrived");
            received.extend_from_slice(&chunk[..n]);
            largest_held = largest_held.max(held(&server));
        }
        assert!(received == upload, "the upload arrives byte for byte");
        assert!(largest_held >= MAX_RECORD, "a bulk flow reads whole records at a time");
        assert!(largest_held <= MAX_INCOMING + MAX_READ + 16 * 1024, "and is bounded");

        assert!(
            is_pending(server.read(&mut chunk)).await,
            "the client has nothing more to say"
        );
        assert_eq!(held(&server), 0, "a quiet upload holds no buffer");

        server.write_all(&download).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(held(&server), 0, "a flushed download holds no buffer");
        let (_client, echoed) = client_side.await.unwrap();
        assert!(echoed == download, "the download arrives byte for byte");
    }

    #[tokio::test]
    async fn a_read_into_a_buffer_that_already_holds_bytes_makes_progress() {
        // tokio::io::copy reads into the rest of a buffer it has partly filled; here with less
        // room than the one full record the client sent.
        let (mut client, mut server) = connected().await;
        let record = pattern(16 * 1024);
        client.write_all(&record).await.unwrap();
        client.flush().await.unwrap();

        let mut storage = [0; 8 * 1024];
        let mut buf = ReadBuf::new(&mut storage);
        buf.put_slice(&[0xEE; 100]);
        let read = poll_fn(|cx| Pin::new(&mut server).poll_read(cx, &mut buf));
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the read makes progress")
            .unwrap();
        assert_eq!(
            buf.filled()[100..],
            record[..8 * 1024 - 100],
            "the record's start fills the room"
        );

        let mut rest = vec![0; 16 * 1024 - (8 * 1024 - 100)];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, record[8 * 1024 - 100..], "the rest follows from `pending`");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered_and_data_flows_on() {
        let (mut client, mut server) = connected().await;
        client.write_all(b"before").await.unwrap();
        let mut buf = [0; 6];
        server.read_exact(&mut buf).await.unwrap();

        // update_requested: the server must answer with a KeyUpdate of its own before its next
        // record, or the client cannot decrypt it.
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"after!").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!");
        server.write_all(b"reply").await.unwrap();
        server.flush().await.unwrap();
        let mut reply = [0; 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn close_notify_ends_one_direction_and_the_other_goes_on() {
        let (mut client, mut server) = connected().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        assert_eq!(held(&server), 0, "a closed direction keeps no receive buffer");

        server
            .write_all(b"response after the client's half-close")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"response after the client's half-close");
        assert!(server.write(b"late").await.is_err(), "no write after close_notify");
    }

    #[tokio::test]
    async fn a_socket_closed_without_close_notify_is_an_unexpected_eof() {
        let (client, mut server) = connected().await;
        // A FIN without close_notify first (dropping the socket unread would send a reset).
        client.into_inner().0.shutdown().await.unwrap();
        let error = server.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// The TLS records in `bytes`, as (content type, length).
    fn records(mut bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut records = Vec::new();
        while let [kind, _, _, high, low, body @ ..] = bytes {
            let len = usize::from(*high) << 8 | usize::from(*low);
            records.push((*kind, len));
            bytes = &body[len.min(body.len())..];
        }
        records
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_fails_the_stream_with_an_alert() {
        let (client, mut server) = connected().await;
        let (mut tcp, _) = client.into_inner();
        // An application-data record header with a body that was never encrypted.
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]).await.unwrap();
        tcp.write_all(&[0xAB; 0x20]).await.unwrap();
        let error = server.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        // Session tickets came first; then, sent by the failing read itself, the alert: under
        // TLS 1.3 an application-data record of 2 alert bytes, the content type and a tag.
        const ALERT: (u8, usize) = (0x17, 2 + 1 + 16);
        let mut received = Vec::new();
        let mut chunk = [0; 4096];
        while records(&received).last() != Some(&ALERT) {
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut chunk)).await;
            let n = read.expect("the alert arrives").unwrap();
            assert_ne!(n, 0, "records before the end: {:?}", records(&received));
            received.extend_from_slice(&chunk[..n]);
        }

        let again = server.write(b"late").await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData, "a failed stream stays failed");
    }
}
