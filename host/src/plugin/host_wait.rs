//! Time a call spends waiting on the host rather than running: a blocking
//! key-value write queues for the store's lock and waits for its disk sync.
//! Under many writers that wait can outgrow a deadline meant for the
//! plugin's own work, and a well-behaved plugin would time out (and count
//! towards its quarantine) for the host's slowness. So the wait is counted,
//! including one under way when the deadline comes, and given back to the
//! call, up to [`MAX_CREDIT`] times its `call_timeout`: a plugin that
//! writes in a loop cannot stretch its call without bound.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Host waits are given back up to this many call timeouts.
pub const MAX_CREDIT: u32 = 10;

/// One store's account of host waits during the current call.
#[derive(Clone, Default)]
pub struct HostWait(Arc<Mutex<Account>>);

#[derive(Default)]
struct Account {
    total: Duration,
    since: Option<Instant>,
}

/// Marks a wait; counted when dropped.
pub struct Waiting(HostWait);

impl HostWait {
    fn account(&self) -> std::sync::MutexGuard<'_, Account> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a new call's account.
    pub fn reset(&self) {
        *self.account() = Account::default();
    }

    /// The host is waited on until the returned guard is dropped.
    pub fn begin(&self) -> Waiting {
        self.account().since = Some(Instant::now());
        Waiting(self.clone())
    }

    /// Time waited so far in this call, the wait under way included.
    pub fn total(&self) -> Duration {
        let account = self.account();
        account.total
            + account
                .since
                .map_or(Duration::ZERO, |since| since.elapsed())
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

/// Runs `call` until it ends or `timeout` of its own time passes, time
/// waited on the host given back up to [`MAX_CREDIT`] timeouts; `None` if
/// it ran out.
pub async fn within_deadline<F: Future>(
    call: F,
    timeout: Duration,
    host_wait: &HostWait,
) -> Option<F::Output> {
    let started = tokio::time::Instant::now();
    let max_credit = timeout.saturating_mul(MAX_CREDIT);
    let mut call = std::pin::pin!(call);
    loop {
        let credit = host_wait.total().min(max_credit);
        match tokio::time::timeout_at(started + timeout + credit, &mut call).await {
            Ok(output) => return Some(output),
            // More was waited on the host since the deadline was set.
            Err(_) if host_wait.total().min(max_credit) > credit => continue,
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
        wait.reset();
        let own_work = tokio::time::sleep(Duration::from_millis(80));
        assert!(within_deadline(own_work, timeout, &wait).await.is_none());
        wait.reset();
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
