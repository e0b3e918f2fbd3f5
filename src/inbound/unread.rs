//! unread: bytes already in hand that a reader has not taken yet. They go out before anything
//! read later, and their storage is freed once the last of them is taken: a long-lived
//! connection should not carry a hello, or one record's overflow, for the rest of its life.

use tokio::io::ReadBuf;

#[derive(Debug, Default)]
pub struct Unread {
    bytes: Vec<u8>,
    /// How much of `bytes` has been handed out.
    taken: usize,
}

impl Unread {
    pub fn new(bytes: Vec<u8>) -> Self {
        Unread { bytes, taken: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.taken == self.bytes.len()
    }

    /// Adds `more` behind what is still unread.
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        self.bytes.extend_from_slice(more);
    }

    /// Moves as much as fits into `buf`.
    pub fn take_into(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = &self.bytes[self.taken..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        if self.is_empty() {
            *self = Unread::default();
        }
    }

    /// The heap bytes held.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}
