//! The batch flush policy: when the writer stops taking queued frames and writes.
//!
//! A batch opens with its first frame. The writer takes every frame already queued, then asks
//! [`Batcher::decide`]:
//! - at the byte limit, flush ([`FlushReason::Bytes`]);
//! - more queued, take it;
//! - queue empty and no delay configured, flush now ([`FlushReason::Idle`]): the default, so an
//!   idle connection adds no latency, while a busy one batches whatever piled up during the
//!   previous write;
//! - queue empty with a delay, wait for more frames until the batch is `max_delay` old, then flush
//!   ([`FlushReason::Delay`]): fewer, larger batches for links that pay per packet.
//!
//! Sans-IO: the clock is passed in.

use std::time::Duration;

use tokio::time::Instant;

/// How the writer batches frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The longest a frame waits for company once the queue is empty. Default 0: write as soon as
    /// the queue empties. The wait is a tokio timer, which ticks in milliseconds: a delay under
    /// 1 ms waits until the next tick, up to about 1 ms.
    pub max_delay: Duration,
    /// Write once a batch holds this many bytes of frames, whatever is still queued. Default
    /// 256 KiB.
    pub max_bytes: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_delay: Duration::ZERO,
            max_bytes: 256 << 10,
        }
    }
}

/// Why a batch was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The queue was empty and no delay is configured.
    Idle,
    /// The batch reached its maximum delay.
    Delay,
    /// The batch reached its byte limit.
    Bytes,
}

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take the next queued frame into the batch.
    Take,
    /// Write the batch.
    Flush(FlushReason),
    /// Wait for a frame until this instant, then ask again.
    WaitUntil(Instant),
}

/// The flush policy's state for one connection's writer.
#[derive(Debug)]
pub struct Batcher {
    policy: BatchPolicy,
    opened: Option<Instant>,
}

impl Batcher {
    /// A batcher with no batch open.
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            opened: None,
        }
    }

    /// Whether a batch is written as soon as nothing more is queued: no delay is configured.
    pub fn is_immediate(&self) -> bool {
        self.policy.max_delay.is_zero()
    }

    /// Forgets the open batch: it was written, whatever the reason.
    pub fn reset(&mut self) {
        self.opened = None;
    }

    /// Decides, for a batch of `bytes` so far, with the queue empty or not. The first call after
    /// a flush opens a new batch at `now`.
    pub fn decide(&mut self, now: Instant, bytes: usize, queue_empty: bool) -> Decision {
        let opened = *self.opened.get_or_insert(now);
        let decision = if bytes >= self.policy.max_bytes {
            Decision::Flush(FlushReason::Bytes)
        } else if !queue_empty {
            Decision::Take
        } else if self.policy.max_delay.is_zero() {
            Decision::Flush(FlushReason::Idle)
        } else if now >= opened + self.policy.max_delay {
            Decision::Flush(FlushReason::Delay)
        } else {
            Decision::WaitUntil(opened + self.policy.max_delay)
        };
        if let Decision::Flush(_) = decision {
            self.opened = None;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_delay_a_batch_ends_when_the_queue_empties() {
        let mut b = Batcher::new(BatchPolicy::default());
        let t = Instant::now();
        assert_eq!(b.decide(t, 100, false), Decision::Take);
        assert_eq!(b.decide(t, 200, true), Decision::Flush(FlushReason::Idle));
    }

    #[test]
    fn the_byte_limit_wins_over_a_full_queue() {
        let policy = BatchPolicy {
            max_delay: Duration::from_millis(5),
            max_bytes: 1000,
        };
        let mut b = Batcher::new(policy);
        let t = Instant::now();
        assert_eq!(b.decide(t, 999, false), Decision::Take);
        assert_eq!(
            b.decide(t, 1000, false),
            Decision::Flush(FlushReason::Bytes)
        );
    }

    #[test]
    fn with_a_delay_the_batch_waits_from_its_first_frame() {
        let delay = Duration::from_millis(5);
        let mut b = Batcher::new(BatchPolicy {
            max_delay: delay,
            max_bytes: 1000,
        });
        let t0 = Instant::now();
        assert_eq!(b.decide(t0, 10, true), Decision::WaitUntil(t0 + delay));
        // Frames arriving later do not push the deadline back.
        let t1 = t0 + Duration::from_millis(3);
        assert_eq!(b.decide(t1, 20, true), Decision::WaitUntil(t0 + delay));
        assert_eq!(
            b.decide(t0 + delay, 20, true),
            Decision::Flush(FlushReason::Delay)
        );
        // The next batch opens afresh.
        let t2 = t0 + Duration::from_millis(50);
        assert_eq!(b.decide(t2, 10, true), Decision::WaitUntil(t2 + delay));
    }
}
