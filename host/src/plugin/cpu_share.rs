//! A plugin's share of the CPU: at most `max_concurrent_calls` of its calls
//! run at once. With 512 connections looping in one plugin, another
//! plugin's command once waited 1.7 s behind them; now the rest wait for a
//! place (FIFO, their deadline running) and use no CPU meanwhile, and the
//! worker threads stay free for everyone else. A call gives its place up
//! while it waits on the host (a blocking store write) or on I/O (an HTTP
//! response, a TCP peer, a timer: `io_waits.rs`), so the bound is on CPU,
//! not on I/O.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places of one plugin's running calls.
#[derive(Clone)]
pub struct CpuShare(Arc<Semaphore>);

/// A call's place, held in its store while it runs.
#[derive(Default)]
pub struct Running {
    share: Option<CpuShare>,
    place: Option<OwnedSemaphorePermit>,
    /// When the call first got a place.
    first_place: Option<std::time::Instant>,
}

impl CpuShare {
    pub fn new(max_concurrent_calls: u32) -> Self {
        Self(Arc::new(Semaphore::new(max_concurrent_calls as usize)))
    }
}

/// The default share: twice the cores, so that a plugin alone keeps every
/// worker busy while others still get their turn between its slices.
pub fn default_max_concurrent_calls() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    u32::try_from(cores.saturating_mul(2)).unwrap_or(u32::MAX)
}

impl Running {
    /// Waits for a place in `share`.
    pub async fn start(&mut self, share: &CpuShare) {
        self.share = Some(share.clone());
        self.resume().await;
    }

    /// Gives the place up while the call waits on the host.
    pub fn pause(&mut self) {
        self.place = None;
    }

    /// Takes a place again after [`Running::pause`].
    pub async fn resume(&mut self) {
        if let Some(share) = &self.share {
            // The semaphore is never closed.
            self.place = share.0.clone().acquire_owned().await.ok();
            self.first_place.get_or_insert_with(std::time::Instant::now);
        }
    }

    /// Whether the call got a place before `deadline`. One that ran out of
    /// time still waiting never ran: that is the host's queue, not the
    /// plugin's failure. (A place freed by a call timing out goes straight
    /// to the next waiter, which may be past its deadline too: getting a
    /// place then is not running.)
    pub fn ran_before(&self, deadline: std::time::Instant) -> bool {
        self.first_place.is_some_and(|at| at < deadline)
    }

    /// The call is over (kept warm, or discarded).
    pub fn finish(&mut self) {
        self.place = None;
        self.share = None;
        self.first_place = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn calls_beyond_the_share_wait_and_a_paused_call_lets_one_in() {
        let share = CpuShare::new(1);
        let mut first = Running::default();
        first.start(&share).await;
        let mut second = Running::default();
        let waiting = tokio::time::timeout(Duration::from_millis(50), second.start(&share));
        assert!(waiting.await.is_err(), "a second call ran beside the first");
        first.pause();
        let mut third = Running::default();
        tokio::time::timeout(Duration::from_secs(1), third.start(&share))
            .await
            .expect("the paused call's place");
        third.finish();
        tokio::time::timeout(Duration::from_secs(1), first.resume())
            .await
            .expect("the place back");
    }
}
