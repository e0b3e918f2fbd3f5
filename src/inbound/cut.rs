//! The cut at the end of a drain: what ends the connections a drain's deadline leaves open.
//!
//! One flag and one [`Notify`], not a `watch` channel: every connection waits on it twice (the
//! connection as a whole, and its byte copying), and both must see the cut in the same poll,
//! or a forwarding connection could be ended as if it had never reached the app. Waiters of
//! one `Notify` all see `notify_waiters` at once (each `Notified` compares the call count it
//! was made at); a `watch` spreads its waiters over several `Notify`s woken one after another.

use std::sync::atomic::{AtomicBool, Ordering};

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
    /// woken by its connection's [`Cut::wait`]) checks instead of holding a waiter of its own.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resolves once [`Cut::cut`] has been called.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a cut between the two is not missed.
            notified.as_mut().enable();
            if self.is_cut() {
                return;
            }
            notified.await;
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
                tokio::spawn(async move { cut.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        cut.cut();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        cut.wait().await;
    }
}
