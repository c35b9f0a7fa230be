//! Time a call spends waiting on the host rather than running: a blocking
//! key-value write queues for the store's lock and waits for its disk sync.
//! Under many writers that wait can outgrow a deadline meant for the
//! plugin's own work, and a well-behaved plugin would time out (and count
//! towards its quarantine) for the host's slowness. So the wait is counted,
//! including one under way when the deadline comes, and given back to the
//! call, up to [`MAX_CREDIT`] times its `call_timeout`: a plugin that
//! writes in a loop cannot stretch its call without bound.
//!
//! The account also says when the current command started: a call that
//! serves a batch restarts it for each command (see `batch.rs`), and the
//! deadline follows.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Host waits are given back up to this many call timeouts.
pub const MAX_CREDIT: u32 = 10;

/// One store's account of host waits during the current call.
#[derive(Clone, Default)]
pub struct HostWait(Arc<Mutex<Account>>);

struct Account {
    /// When the current command started.
    started: Instant,
    total: Duration,
    since: Option<Instant>,
}

impl Default for Account {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            total: Duration::ZERO,
            since: None,
        }
    }
}

/// Marks a wait; counted when dropped.
pub struct Waiting(HostWait);

impl HostWait {
    fn account(&self) -> std::sync::MutexGuard<'_, Account> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a new command's account, from `started`.
    pub fn reset_from(&self, started: Instant) {
        // Not `..Account::default()`: that reads the clock, once per
        // command of a batch, for a time overwritten at once.
        *self.account() = Account {
            started,
            total: Duration::ZERO,
            since: None,
        };
    }

    /// When the current command started.
    pub fn started(&self) -> Instant {
        self.account().started
    }

    /// When the current command runs out of `timeout` of its own time.
    fn deadline(&self, timeout: Duration) -> Instant {
        let account = self.account();
        account.started + timeout + account.waited().min(timeout.saturating_mul(MAX_CREDIT))
    }

    /// The host is waited on until the returned guard is dropped.
    pub fn begin(&self) -> Waiting {
        self.account().since = Some(Instant::now());
        Waiting(self.clone())
    }
}

impl Account {
    /// Time waited so far in this command, the wait under way included.
    fn waited(&self) -> Duration {
        self.total + self.since.map_or(Duration::ZERO, |since| since.elapsed())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut account = self.0.account();
        if let Some(since) = account.since.take() {
            account.total += since.elapsed();
        }
    }
}

/// Runs `call` until it ends or its current command has run `timeout` of
/// its own time, time waited on the host given back up to [`MAX_CREDIT`]
/// timeouts; `None` if it ran out.
pub async fn within_deadline<F: Future>(
    call: F,
    timeout: Duration,
    host_wait: &HostWait,
) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    loop {
        let deadline = host_wait.deadline(timeout);
        match tokio::time::timeout_at(deadline.into(), &mut call).await {
            Ok(output) => return Some(output),
            // A new command started, or more was waited on the host, since
            // the deadline was set.
            Err(_) if host_wait.deadline(timeout) > deadline => continue,
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_waits_are_given_back_up_to_the_credit() {
        let wait = HostWait::default();
        let timeout = Duration::from_millis(50);
        let waits_on_host = async {
            let _waiting = wait.begin();
            tokio::time::sleep(Duration::from_millis(80)).await;
        };
        assert!(
            within_deadline(waits_on_host, timeout, &wait)
                .await
                .is_some()
        );
        wait.reset_from(Instant::now());
        let own_work = tokio::time::sleep(Duration::from_millis(80));
        assert!(within_deadline(own_work, timeout, &wait).await.is_none());
        wait.reset_from(Instant::now());
        let endless_wait = async {
            let _waiting = wait.begin();
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        let started = Instant::now();
        assert!(
            within_deadline(endless_wait, timeout, &wait)
                .await
                .is_none()
        );
        let most = timeout * (MAX_CREDIT + 1);
        assert!(started.elapsed() < most + Duration::from_millis(200));
    }
}
