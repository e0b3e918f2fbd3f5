//! Replays the bytes already read before reading on from the socket, so that the TLS acceptor
//! of an app that looked at its first bytes (the demo's echo app, and the tests' apps) sees the
//! stream from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::inbound::unread::Unread;

/// An I/O stream with already-read bytes in front of it.
#[derive(Debug)]
pub struct PrefixedIo<S> {
    prefix: Unread,
    inner: S,
}

impl<S> PrefixedIo<S> {
    /// The stream under the replayed bytes.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix: Unread::new(prefix),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            this.prefix.take_into(buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replays_the_prefix_then_reads_on() {
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut writer, b" world")
            .await
            .unwrap();
        drop(writer);
        let mut io = PrefixedIo::new(b"hello".to_vec(), reader);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    #[tokio::test]
    async fn a_small_read_buffer_gets_the_prefix_in_pieces() {
        let (_writer, reader) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(b"abcdef".to_vec(), reader);
        let mut two = [0u8; 2];
        for expected in [b"ab", b"cd", b"ef"] {
            io.read_exact(&mut two).await.unwrap();
            assert_eq!(&two, expected);
        }
    }
}
