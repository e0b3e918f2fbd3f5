//! A value that is replaced whole, never edited: readers take the current `Arc` and keep it.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Live<T> {
    tx: watch::Sender<Arc<T>>,
}

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live {
            tx: watch::Sender::new(Arc::new(value)),
        }
    }

    pub fn current(&self) -> Arc<T> {
        self.tx.borrow().clone()
    }

    pub fn replace(&self, value: T) {
        self.tx.send_replace(Arc::new(value));
    }

    /// Waits until the current value satisfies `ready` (at once if it does already).
    pub async fn wait_for(&self, mut ready: impl FnMut(&T) -> bool) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so the wait cannot end in an error.
        let _ = rx.wait_for(|value| ready(value)).await;
    }
}
