//! The cut at the end of a drain: what ends the connections a drain's deadline leaves open.
//!
//! One flag and one [`Notify`], not a `watch` channel: every connection waits on it twice (the
//! connection as a whole, and its byte copying), and both must see the cut in the same poll,
//! or a forwarding connection could be ended as if it had never reached the app. Waiters of
//! one `Notify` all see `notify_waiters` at once (each `Notified` compares the call count it
//! was made at); a `watch` spreads its waiters over several `Notify`s woken one after another.

use std::sync::atomic::{AtomicBool, Ordering};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Cut {
    cut: AtomicBool,
    notify: Notify,
}

impl Cut {
    /// Cuts every connection now and from now on.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether [`Cut::cut`] has been called: what a future that is polled anyway (forwarding,
    /// woken by its connection's [`Cut::unless_cut`]) checks instead of holding a waiter of its own.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// `future`'s output, or None if the cut comes while it is still pending. `future` is
    /// polled even then, first, so that one which reads [`Cut::is_cut`] itself (forwarding)
    /// ends on its own terms, with what it carried counted.
    pub fn unless_cut<F: Future>(&self, future: F) -> UnlessCut<'_, F> {
        UnlessCut {
            cut: self,
            // A `Notified` sees every `notify_waiters` from its creation on, polled or not; a
            // cut before it is in the flag.
            notified: self.notify.notified(),
            future,
        }
    }
}

pin_project! {
    /// See [`Cut::unless_cut`]. A future of its own rather than an async block around the
    /// two: every connection is one, and the block's state was 32 bytes larger.
    pub struct UnlessCut<'a, F> {
        cut: &'a Cut,
        #[pin]
        notified: Notified<'a>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for UnlessCut<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let cut = this.cut.is_cut() || this.notified.poll(cx).is_ready();
        match this.future.poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if cut => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn every_waiter_sees_the_cut_including_those_that_come_after_it() {
        let cut = Arc::new(Cut::default());
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let cut = cut.clone();
                tokio::spawn(async move { cut.unless_cut(std::future::pending::<()>()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        cut.cut();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), None);
        }
        assert_eq!(cut.unless_cut(std::future::pending::<()>()).await, None);
    }

    #[tokio::test]
    async fn a_future_that_finishes_in_the_poll_that_sees_the_cut_keeps_its_output() {
        let cut = Cut::default();
        cut.cut();
        assert_eq!(cut.unless_cut(async { 7 }).await, Some(7));
    }
}
