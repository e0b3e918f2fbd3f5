//! classify: read a connection's first bytes, under a deadline and a size cap, and say what
//! they are. Everything read is handed back so it can be replayed byte for byte.
//!
//! Reads into a bounded buffer and parses after each read; it never loops on `peek` (a short
//! peek returns at once and would spin).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::outcome::Opening;
use crate::tls::client_hello::{self, ClientHello, HelloParse};

/// How much of a connection may be read, and for how long, before deciding.
#[derive(Debug, Clone, Copy)]
pub struct SniffLimits {
    pub max_client_hello: usize,
    pub timeout: Duration,
}

/// What classifying a connection's first bytes found (docs/connections.md#the-first-bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not read at all: DISABLE ports forward at once, so server-first protocols work.
    NotRead,
    /// No byte arrived within the sniff timeout (a server-first protocol, or a stalled client).
    Silent,
    /// Part of a ClientHello arrived, then nothing more within the sniff timeout.
    Stalled,
    /// The first bytes are not a TLS handshake record.
    Plaintext,
    /// A whole, well-formed ClientHello.
    Tls(ClientHello),
    /// A TLS handshake record whose ClientHello does not parse.
    Malformed,
    /// A ClientHello larger than `--max-client-hello`.
    TooLarge,
}

impl Sniffed {
    /// How the client opened the connection; `Unseen` when the bytes were not read.
    pub fn opening(&self) -> Opening {
        match self {
            Sniffed::NotRead => Opening::Unseen,
            Sniffed::Silent => Opening::ServerFirst,
            Sniffed::Plaintext => Opening::Plaintext,
            Sniffed::Tls(_) => Opening::Tls,
            Sniffed::Stalled | Sniffed::Malformed | Sniffed::TooLarge => Opening::BrokenTls,
        }
    }
}

/// The first bytes, classified.
#[derive(Debug)]
pub struct Classified {
    pub sniffed: Sniffed,
    /// Every byte read so far, to replay to whoever handles the connection next.
    pub prefix: Vec<u8>,
    /// Time spent waiting for and reading the first bytes; `None` when they were not read.
    pub elapsed: Option<Duration>,
}

impl Classified {
    /// The first bytes of a connection that is forwarded without reading them (DISABLE).
    pub fn not_read() -> Self {
        Classified {
            sniffed: Sniffed::NotRead,
            prefix: Vec::new(),
            elapsed: None,
        }
    }
}

/// Why no classification could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("the client closed the connection before its first bytes could be classified")]
    ClosedEarly,
    #[error("reading the first bytes failed: {0}")]
    Io(#[from] io::Error),
}

/// Enough for a plaintext request line or a typical ClientHello in one read; grown on demand
/// up to the cap for multi-record or post-quantum hellos.
const FIRST_READ: usize = 2048;

pub async fn classify<S: AsyncRead + Unpin>(stream: &mut S, limits: SniffLimits) -> Result<Classified, ClassifyError> {
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let mut buf: Vec<u8> = Vec::new();
    let mut want = FIRST_READ.min(limits.max_client_hello.max(1));

    let sniffed = loop {
        let filled = buf.len();
        buf.resize(want, 0);
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[filled..])).await;
        let n = match read {
            Err(_elapsed) => {
                buf.truncate(filled);
                break if filled == 0 { Sniffed::Silent } else { Sniffed::Stalled };
            }
            Ok(Err(e)) => return Err(ClassifyError::Io(e)),
            Ok(Ok(n)) => n,
        };
        buf.truncate(filled + n);
        if n == 0 {
            return Err(ClassifyError::ClosedEarly);
        }
        match client_hello::parse(&buf) {
            HelloParse::Complete(hello) => break Sniffed::Tls(hello),
            HelloParse::NotTls => break Sniffed::Plaintext,
            HelloParse::Malformed(_) => break Sniffed::Malformed,
            HelloParse::Incomplete { needed } => {
                let needed = needed.unwrap_or(buf.len() + 1);
                if needed > limits.max_client_hello {
                    break Sniffed::TooLarge;
                }
                // Read exactly what the hello still needs when known, so bytes after it (the
                // client's next flight) stay in the socket for the TLS engine.
                want = needed.max(buf.len() + 1).min(limits.max_client_hello);
            }
        }
    };
    Ok(Classified {
        sniffed,
        prefix: buf,
        elapsed: Some(started.elapsed()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const LIMITS: SniffLimits = SniffLimits {
        max_client_hello: 16 * 1024,
        timeout: Duration::from_millis(300),
    };

    #[tokio::test]
    async fn plaintext_is_recognised_from_its_first_byte_and_kept() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let got = classify(&mut server, LIMITS).await.unwrap();
        assert_eq!(got.sniffed, Sniffed::Plaintext);
        assert_eq!(got.prefix, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_reported_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let got = classify(&mut server, LIMITS).await.unwrap();
        assert_eq!(got.sniffed, Sniffed::Silent);
        assert!(got.prefix.is_empty());
        assert!(got.elapsed >= Some(LIMITS.timeout));
    }

    #[tokio::test]
    async fn a_partial_hello_that_stalls_is_reported_with_its_bytes() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
        let got = classify(&mut server, LIMITS).await.unwrap();
        assert_eq!(got.sniffed, Sniffed::Stalled);
        assert_eq!(got.prefix, [22, 3, 1, 0, 200, 1]);
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_an_error() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        assert!(matches!(
            classify(&mut server, LIMITS).await,
            Err(ClassifyError::ClosedEarly)
        ));
    }

    #[tokio::test]
    async fn a_hello_declaring_more_than_the_cap_is_refused_without_reading_it_all() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        // Record of 16 KiB carrying a ClientHello that declares 64 KiB: over any cap here.
        client
            .write_all(&[22, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x00])
            .await
            .unwrap();
        let got = classify(
            &mut server,
            SniffLimits {
                max_client_hello: 4096,
                ..LIMITS
            },
        )
        .await
        .unwrap();
        assert_eq!(got.sniffed, Sniffed::TooLarge);
    }
}
