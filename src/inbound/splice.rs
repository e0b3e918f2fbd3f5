//! splice: bulk plaintext moves socket -> pipe -> socket inside the kernel (splice(2)), never
//! copied through user space. Reading into a buffer and writing it out costs two copies of every
//! byte in the proxy; splicing costs none on the receive side and none on a send that can take
//! the pipe's pages, which is what brings a streamed gigabyte down to the cost of its syscalls.
//!
//! A pipe is two descriptors and a kernel buffer, so only a direction that carries bulk gets one
//! (`forward` makes it when a read fills its whole stack chunk), and it is closed once the
//! connection has been quiet for a moment: the short connections that are most of a sidecar's
//! traffic never pay for a pipe, and an idle connection holds none.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{ready, Context, Poll};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe capacity asked for: a bulk flow moves up to this much per splice, as HAProxy's
/// tuned 256 KiB buffers do. The kernel may refuse it (a user's pipe memory is capped,
/// /proc/sys/fs/pipe-user-pages-soft); the default 64 KiB pipe then works as well, in more
/// calls. 64 KiB and 1 MiB measured within noise of this on the load harness.
const WANTED_CAPACITY: usize = 256 * 1024;

/// What a pipe holds when the kernel does not tell: its default, 16 pages.
const DEFAULT_CAPACITY: usize = 64 * 1024;

/// The kernel pipe of one direction, and how many bytes it holds for the destination.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = fcntl_setpipe_size(&write, WANTED_CAPACITY).unwrap_or(DEFAULT_CAPACITY);
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Moves what the source has into the (empty) pipe: `Ready(Ok(0))` at the source's EOF,
    /// `Pending` (waker registered) when it has nothing now.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, source: &TcpStream) -> Poll<io::Result<usize>> {
        debug_assert_eq!(
            self.held, 0,
            "fill only an empty pipe, so EAGAIN means the socket is dry"
        );
        loop {
            ready!(source.poll_read_ready(cx))?;
            let spliced = source.try_io(Interest::READABLE, || {
                Ok(splice(source, None, &self.write, None, self.capacity, flags())?)
            });
            match spliced {
                Ok(n) => {
                    self.held = n;
                    return Poll::Ready(Ok(n));
                }
                // Readiness was stale; `try_io` cleared it, so the next poll registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Moves the pipe's bytes on to the destination: `Ready(Ok)` once the pipe is empty,
    /// `Pending` (waker registered) while the destination cannot take more.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, destination: &TcpStream) -> Poll<io::Result<()>> {
        while self.held > 0 {
            ready!(destination.poll_write_ready(cx))?;
            let spliced = destination.try_io(Interest::WRITABLE, || {
                Ok(splice(&self.read, None, destination, None, self.held, flags())?)
            });
            match spliced {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Never block (the sockets are non-blocking, the pipe must not be either), and move pages
/// rather than copy them where the kernel can.
fn flags() -> SpliceFlags {
    SpliceFlags::NONBLOCK | SpliceFlags::MOVE
}
