//! A cancellation token's future that is cheap to poll on every wake-up.
//!
//! A connection's task selects over its socket, its queues and a shutdown token, and `select!`
//! polls every branch each time the task wakes: once per request or more. The token's own
//! future ([`CancellationToken::cancelled`]) takes the token's mutex on each of those polls.
//! [`Cancelled`] polls it only after its own waker has fired; any other wake-up costs a waker
//! registration and an atomic swap.
//!
//! ```text
//!   task wakes ──▶ Cancelled::poll ──▶ woken? ──no──▶ Pending   (no lock)
//!                                        │yes
//!                                        ▼
//!                  token's future polled with the gate's waker ──▶ Ready once cancelled
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Completes once the token is cancelled (at once if it already is). Fused: polling it after
/// it completed returns `Ready` again.
pub struct Cancelled {
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    gate: Arc<Gate>,
    /// The gate as a waker, made once: the token's future keeps it from poll to poll.
    waker: Waker,
    done: bool,
}

/// Between the token's future and the task: records that the token's future asked to be polled.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Cancelled {
    /// Waits for `token`'s cancellation.
    pub fn new(token: CancellationToken) -> Self {
        let gate = Arc::new(Gate {
            // The token's future has not been polled yet: the first poll must reach it.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            wait: Box::pin(token.cancelled_owned()),
            waker: Waker::from(gate.clone()),
            gate,
            done: false,
        }
    }
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        // Register before reading the flag: a wake-up in between is then seen either way.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut gated = Context::from_waker(&this.waker);
        let poll = this.wait.as_mut().poll(&mut gated);
        this.done = poll.is_ready();
        poll
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Counts the wake-ups of the task polling the future.
    #[derive(Default)]
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(fut: &mut Cancelled, waker: &Waker) -> Poll<()> {
        Pin::new(fut).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn completes_on_cancel_and_wakes_the_task() {
        let token = CancellationToken::new();
        let mut fut = Cancelled::new(token.clone());
        let wakes = Arc::new(CountWakes::default());
        let waker = Waker::from(wakes.clone());
        assert!(poll(&mut fut, &waker).is_pending());
        // Polls without a cancellation in between stay pending and leave the token alone.
        assert!(poll(&mut fut, &waker).is_pending());
        assert!(poll(&mut fut, &waker).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        token.cancel();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "cancel wakes the task");
        assert!(poll(&mut fut, &waker).is_ready());
        assert!(poll(&mut fut, &waker).is_ready(), "fused");
    }

    #[test]
    fn an_already_cancelled_token_completes_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut fut = Cancelled::new(token);
        let waker = Waker::from(Arc::new(CountWakes::default()));
        assert!(poll(&mut fut, &waker).is_ready());
    }

    #[test]
    fn the_latest_task_waker_is_woken() {
        let token = CancellationToken::new();
        let child = token.child_token();
        let mut fut = Cancelled::new(child);
        let first = Arc::new(CountWakes::default());
        let second = Arc::new(CountWakes::default());
        assert!(poll(&mut fut, &Waker::from(first.clone())).is_pending());
        // The future moved to another task: that task's waker is the one to wake.
        assert!(poll(&mut fut, &Waker::from(second.clone())).is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut fut, &Waker::from(second)).is_ready());
    }

    #[tokio::test]
    async fn wakes_a_task_that_other_branches_woke_many_times() {
        let token = CancellationToken::new();
        let mut cancelled = Cancelled::new(token.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel::<u32>(1);
        let waiter = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = &mut cancelled => return,
                    Some(i) = rx.recv() => seen_tx.send(i).await.unwrap(),
                }
            }
        });
        for i in 0..100 {
            tx.send(i).await.unwrap();
            assert_eq!(seen_rx.recv().await, Some(i));
        }
        token.cancel();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the cancel reached the task")
            .unwrap();
    }
}
