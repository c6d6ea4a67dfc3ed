//! The worker's shutdown signal, which the lease loop and a running task's heartbeat loop
//! both wait on.

use std::future::Future;
use std::pin::Pin;

/// The shutdown future, pollable from several places: once it has fired, [`Shutdown::wait`]
/// returns at once.
pub(crate) struct Shutdown {
    signal: Pin<Box<dyn Future<Output = ()> + Send>>,
    fired: bool,
}

impl Shutdown {
    pub(crate) fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            signal: Box::pin(signal),
            fired: false,
        }
    }

    /// Waits until shutdown is asked for (cancel-safe).
    pub(crate) async fn wait(&mut self) {
        if !self.fired {
            self.signal.as_mut().await;
            self.fired = true;
        }
    }

    /// `f`'s output, or `None` if shutdown is asked for first (then `f` is dropped).
    pub(crate) async fn unless<T>(&mut self, f: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.wait() => None,
            r = f => Some(r),
        }
    }
}
