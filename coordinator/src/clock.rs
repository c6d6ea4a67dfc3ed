//! The coordinator's sense of time, injected so that tests can move it: lease deadlines,
//! `created`/`updated` stamps and the lease-expiry loop all read a [`Clock`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// A future returned by [`Clock::sleep_until_ms`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Completes once [`Clock::now_ms`] has reached `deadline_ms`, or earlier (callers check
    /// the time again, so an early wake-up only costs a check). The default sleeps in real
    /// time.
    fn sleep_until_ms(&self, deadline_ms: i64) -> Sleep<'_> {
        let wait = u64::try_from(deadline_ms.saturating_sub(self.now_ms())).unwrap_or(0);
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970: report the epoch rather than fail.
            Err(_) => 0,
        }
    }
}

/// A clock that only moves when told to ([`ManualClock::advance`]), for tests. Moving it wakes
/// everything sleeping on it, the lease-expiry loop included.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    /// A clock standing at `start_ms` (milliseconds since the Unix epoch).
    pub fn new(start_ms: i64) -> Self {
        Self {
            now_ms: AtomicI64::new(start_ms),
            moved: Notify::new(),
        }
    }

    /// Moves the clock forward by `by` and wakes the sleepers.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Default for ManualClock {
    /// A clock standing at 2024-01-01T00:00:00Z.
    fn default() -> Self {
        Self::new(1_704_067_200_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn sleep_until_ms(&self, deadline_ms: i64) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                let moved = self.moved.notified();
                tokio::pin!(moved);
                // Registered before the time is read, so an `advance` in between is not lost.
                moved.as_mut().enable();
                if self.now_ms() >= deadline_ms {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = Arc::new(ManualClock::new(1_000));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until_ms(6_000).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(2));
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(3));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the sleeper wakes")
            .expect("no panic");
        assert_eq!(clock.now_ms(), 6_000);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
