//! The requests pending on one connection: each request's answer slot, by request id, and the
//! deadlines, which the connection's task enforces with one timer for all of them.
//!
//! A request registers a slot with its deadline and waits on it; the connection's task puts the
//! answer in the slot (a response, an error, or a timeout when the deadline passes first) and
//! wakes the request. No channel is allocated per request and no timer is armed per request.
//!
//! A request that may be sent again (an idempotent one, under a retry policy) registers a slot
//! that keeps its frame once written: the connection's task hands written frames back to their
//! slots instead of dropping them, and the request takes its frame back with its answer.
//!
//! Deadlines are kept in two queues. Requests that use the client's default timeout register
//! in deadline order, so most deadlines go to the back of a FIFO; a deadline earlier than the
//! FIFO's back (a shorter per-request timeout, or any after a longer one) goes to a heap.
//! Answered slots leave their deadline behind; it is dropped when it reaches the front, and both
//! queues are compacted when such leftovers outnumber the waiting requests, so the deadlines kept
//! stay proportional to the requests pending (the queues' capacity, like the slots', stays at its
//! high-water mark).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

/// Leftover deadlines tolerated beyond twice the waiting requests before compacting.
const COMPACT_SLACK: usize = 1024;

/// The pending requests of one connection, each answered with a `T`, some keeping what they
/// sent (a `K`).
pub(crate) struct Table<T, K = ()> {
    /// By request id.
    slots: Ring<Slot<T, K>>,
    /// Slots not answered yet.
    waiting: usize,
    /// Deadlines in registration order, which is deadline order.
    ordered: VecDeque<(Instant, u32)>,
    /// Deadlines earlier than `ordered`'s back when they registered.
    others: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Where the connection's timer is set, as last told by [`arm`](Self::arm) or
    /// [`expire`](Self::expire); `None`: not set.
    armed: Option<Instant>,
    next_id: u32,
}

struct Slot<T, K> {
    deadline: Instant,
    state: State<T>,
    /// Whether the request keeps what it sent, and that, once handed back.
    keeps: bool,
    kept: Option<K>,
}

enum State<T> {
    /// Not answered; the waker of the request once it has waited.
    Waiting(Option<Waker>),
    Answered(T),
}

impl<T, K> Default for Table<T, K> {
    fn default() -> Self {
        Self {
            slots: Ring::default(),
            waiting: 0,
            ordered: VecDeque::new(),
            others: BinaryHeap::new(),
            armed: None,
            next_id: 1,
        }
    }
}

impl<T, K> Table<T, K> {
    /// Requests not answered yet.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Registers a request due by `deadline`: its id, and whether the connection's timer must
    /// be moved up for it (call [`arm`](Self::arm)).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, deadline: Instant) -> (u32, bool) {
        self.insert_keeping(deadline, false)
    }

    /// As [`insert`](Self::insert); when `keeps`, the slot takes what the request sent back
    /// through [`keep`](Self::keep), and returns it with the answer.
    pub(crate) fn insert_keeping(&mut self, deadline: Instant, keeps: bool) -> (u32, bool) {
        let earliest = self.armed.is_none_or(|armed| deadline < armed);
        // Ids are u32 and wrap; 0 is reserved, and an id whose place is taken (by a request
        // still pending from a lap before) is skipped.
        self.slots.reserve_one();
        let id = loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != 0 && self.slots.is_free(id) {
                break id;
            }
        };
        self.slots.put(
            id,
            Slot {
                deadline,
                state: State::Waiting(None),
                keeps,
                kept: None,
            },
        );
        self.waiting += 1;
        if self
            .ordered
            .back()
            .is_none_or(|&(last, _)| last <= deadline)
        {
            self.ordered.push_back((deadline, id));
        } else {
            self.others.push(Reverse((deadline, id)));
        }
        (id, earliest)
    }

    /// Answers a waiting request. The waker to wake (after any lock is released) when it was
    /// waiting, or the answer back when it is not (answered already, or given up).
    pub(crate) fn answer(&mut self, id: u32, answer: T) -> Result<Option<Waker>, T> {
        let Some(slot) = self.slots.get_mut(id) else {
            return Err(answer);
        };
        let State::Waiting(waker) = &mut slot.state else {
            return Err(answer);
        };
        let waker = waker.take();
        slot.state = State::Answered(answer);
        self.waiting -= 1;
        self.prune();
        Ok(waker)
    }

    /// Gives a request's slot what it sent, when it keeps that: `None`; otherwise (or when the
    /// request is gone) the value back, to drop.
    pub(crate) fn keep(&mut self, id: u32, sent: K) -> Option<K> {
        match self.slots.get_mut(id) {
            Some(slot) if slot.keeps && slot.kept.is_none() => {
                slot.kept = Some(sent);
                None
            }
            _ => Some(sent),
        }
    }

    /// The answer, once there is one (the slot is then freed); until then the task is woken
    /// when it comes. The id must be registered and not removed.
    #[cfg(test)]
    pub(crate) fn poll_answer(&mut self, id: u32, cx: &mut Context<'_>) -> Poll<T> {
        self.poll_answer_kept(id, cx).map(|(answer, _)| answer)
    }

    /// As [`poll_answer`](Self::poll_answer), with what the slot kept, if anything.
    pub(crate) fn poll_answer_kept(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
    ) -> Poll<(T, Option<K>)> {
        let Some(slot) = self.slots.get_mut(id) else {
            unreachable!("a request waits on a slot it no longer has");
        };
        match &mut slot.state {
            State::Waiting(Some(waker)) => waker.clone_from(cx.waker()),
            State::Waiting(waker) => *waker = Some(cx.waker().clone()),
            State::Answered(_) => {
                let Some(Slot {
                    state: State::Answered(answer),
                    kept,
                    ..
                }) = self.slots.remove(id)
                else {
                    unreachable!()
                };
                return Poll::Ready((answer, kept));
            }
        }
        Poll::Pending
    }

    /// Frees a request's slot, answered or not; whether it was still waiting (`None` when the
    /// id is not registered).
    #[cfg(test)]
    pub(crate) fn remove(&mut self, id: u32) -> Option<bool> {
        self.remove_kept(id).map(|(waiting, _)| waiting)
    }

    /// As [`remove`](Self::remove), with what the slot kept (to drop outside any lock).
    pub(crate) fn remove_kept(&mut self, id: u32) -> Option<(bool, Option<K>)> {
        let slot = self.slots.remove(id)?;
        let waiting = matches!(slot.state, State::Waiting(_));
        if waiting {
            self.waiting -= 1;
            self.prune();
        }
        Some((waiting, slot.kept))
    }

    /// Answers every waiting request with `answer(id)`, and pushes their wakers.
    pub(crate) fn answer_all(&mut self, mut answer: impl FnMut(u32) -> T, wake: &mut Vec<Waker>) {
        for (id, slot) in self.slots.iter_mut() {
            if let State::Waiting(waker) = &mut slot.state {
                wake.extend(waker.take());
                slot.state = State::Answered(answer(id));
            }
        }
        self.waiting = 0;
        self.ordered.clear();
        self.others.clear();
    }

    /// Where to set the connection's timer now: the earliest deadline kept, or `None` (no
    /// timer).
    pub(crate) fn arm(&mut self) -> Option<Instant> {
        self.armed = self.next_deadline();
        self.armed
    }

    /// Answers every waiting request whose deadline is at or before `now` with `timed_out()`,
    /// pushing their ids and wakers; then as [`arm`](Self::arm).
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        mut timed_out: impl FnMut() -> T,
        ids: &mut Vec<u32>,
        wake: &mut Vec<Waker>,
    ) -> Option<Instant> {
        self.expire_due(now, &mut timed_out, ids, wake);
        self.arm()
    }

    fn expire_due(
        &mut self,
        now: Instant,
        timed_out: &mut impl FnMut() -> T,
        ids: &mut Vec<u32>,
        wake: &mut Vec<Waker>,
    ) {
        loop {
            let from_ordered = match (self.ordered.front(), self.others.peek()) {
                (Some(a), Some(Reverse(b))) => a.0 <= b.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            let (deadline, id) = if from_ordered {
                self.ordered[0]
            } else {
                self.others.peek().expect("peeked above").0
            };
            if deadline > now {
                return;
            }
            if from_ordered {
                self.ordered.pop_front();
            } else {
                self.others.pop();
            }
            if let Some(slot) = self.slots.get_mut(id)
                && slot.deadline == deadline
                && let State::Waiting(waker) = &mut slot.state
            {
                wake.extend(waker.take());
                slot.state = State::Answered(timed_out());
                self.waiting -= 1;
                ids.push(id);
            }
        }
    }

    /// The earliest deadline kept (it may belong to a request answered since).
    fn next_deadline(&self) -> Option<Instant> {
        let a = self.ordered.front().map(|&(deadline, _)| deadline);
        let b = self.others.peek().map(|Reverse((deadline, _))| *deadline);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops the deadlines of answered requests at the fronts, and compacts both queues when
    /// leftovers outnumber the waiting requests.
    fn prune(&mut self) {
        let slots = &self.slots;
        let live = |&(deadline, id): &(Instant, u32)| {
            slots.get(id).is_some_and(|slot| {
                slot.deadline == deadline && matches!(slot.state, State::Waiting(_))
            })
        };
        while self.ordered.front().is_some_and(|entry| !live(entry)) {
            self.ordered.pop_front();
        }
        while self
            .others
            .peek()
            .is_some_and(|Reverse(entry)| !live(entry))
        {
            self.others.pop();
        }
        if self.ordered.len() + self.others.len() > 2 * self.waiting + COMPACT_SLACK {
            self.ordered.retain(&live);
            self.others.retain(|Reverse(entry)| live(entry));
        }
    }

    #[cfg(test)]
    fn kept_deadlines(&self) -> usize {
        self.ordered.len() + self.others.len()
    }
}

/// Values by request id, in a ring indexed by the id's low bits. Ids are handed out in sequence,
/// so the requests in flight sit side by side: no hashing, no probing, and the ring's memory is
/// touched in order. An id whose place is taken (by a request still pending from a lap before)
/// is not handed out. The ring is kept at most half full, growing by doubling (never shrinking,
/// like the deadline queues).
struct Ring<V> {
    /// A power of two long, or empty.
    entries: Vec<Option<(u32, V)>>,
    len: usize,
}

impl<V> Default for Ring<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            len: 0,
        }
    }
}

impl<V> Ring<V> {
    /// The smallest ring, once one is needed.
    const MIN: usize = 16;

    fn index(&self, id: u32) -> usize {
        id as usize & (self.entries.len() - 1)
    }

    /// Room for one more value, with the ring still at most half full.
    fn reserve_one(&mut self) {
        if (self.len + 1) * 2 <= self.entries.len() {
            return;
        }
        let size = (self.entries.len() * 2).max(Self::MIN);
        let old = std::mem::replace(&mut self.entries, Vec::with_capacity(size));
        self.entries.resize_with(size, || None);
        // Ids that did not share a place under the shorter mask do not under the longer one.
        for (id, value) in old.into_iter().flatten() {
            let at = self.index(id);
            self.entries[at] = Some((id, value));
        }
    }

    /// Whether `id`'s place is free (after [`reserve_one`](Self::reserve_one)).
    fn is_free(&self, id: u32) -> bool {
        self.entries[self.index(id)].is_none()
    }

    /// Puts `value` at `id`'s place, which must be free.
    fn put(&mut self, id: u32, value: V) {
        let at = self.index(id);
        debug_assert!(self.entries[at].is_none());
        self.entries[at] = Some((id, value));
        self.len += 1;
    }

    fn get(&self, id: u32) -> Option<&V> {
        if self.entries.is_empty() {
            return None;
        }
        match &self.entries[self.index(id)] {
            Some((at, value)) if *at == id => Some(value),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut V> {
        if self.entries.is_empty() {
            return None;
        }
        let at = self.index(id);
        match &mut self.entries[at] {
            Some((key, value)) if *key == id => Some(value),
            _ => None,
        }
    }

    fn remove(&mut self, id: u32) -> Option<V> {
        if self.entries.is_empty() {
            return None;
        }
        let at = self.index(id);
        match &self.entries[at] {
            Some((key, _)) if *key == id => {
                self.len -= 1;
                self.entries[at].take().map(|(_, value)| value)
            }
            _ => None,
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut V)> {
        self.entries
            .iter_mut()
            .flatten()
            .map(|(id, value)| (*id, value))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn an_answer_wakes_the_waiting_request_and_is_taken_once() {
        let now = Instant::now();
        let mut table = Table::<_>::default();
        let (id, earliest) = table.insert(now + Duration::from_secs(1));
        assert!(earliest);
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert!(table.poll_answer(id, &mut cx).is_pending());
        assert_eq!(table.waiting(), 1);

        let to_wake = table.answer(id, "ok").unwrap().expect("a waiter");
        to_wake.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(table.waiting(), 0);
        // A second answer for the same id (a duplicate from the peer) is refused.
        assert_eq!(table.answer(id, "again").unwrap_err(), "again");
        assert_eq!(table.poll_answer(id, &mut cx), Poll::Ready("ok"));
        assert_eq!(table.remove(id), None);
        assert_eq!(table.kept_deadlines(), 0);
    }

    #[test]
    fn only_slots_that_keep_take_what_was_sent_and_give_it_back_with_the_answer() {
        let now = Instant::now();
        let mut table = Table::<&str, String>::default();
        let (keeps, _) = table.insert_keeping(now, true);
        let (plain, _) = table.insert_keeping(now, false);
        let (abandoned, _) = table.insert_keeping(now, true);
        assert_eq!(table.keep(keeps, "a".into()), None);
        // Once only: a second value comes back.
        assert_eq!(table.keep(keeps, "again".into()).as_deref(), Some("again"));
        assert_eq!(table.keep(plain, "b".into()).as_deref(), Some("b"));
        assert_eq!(table.keep(abandoned, "c".into()), None);
        assert_eq!(table.keep(9999, "gone".into()).as_deref(), Some("gone"));

        let (_, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        table.answer(keeps, "lost").unwrap();
        table.answer(plain, "ok").unwrap();
        assert_eq!(
            table.poll_answer_kept(keeps, &mut cx),
            Poll::Ready(("lost", Some("a".into())))
        );
        assert_eq!(
            table.poll_answer_kept(plain, &mut cx),
            Poll::Ready(("ok", None))
        );
        assert_eq!(table.remove_kept(abandoned), Some((true, Some("c".into()))));
        assert_eq!(table.waiting(), 0);
    }

    #[test]
    fn an_answer_for_an_unknown_or_removed_id_is_refused() {
        let mut table = Table::<u32>::default();
        assert_eq!(table.answer(7, 1).unwrap_err(), 1);
        let (id, _) = table.insert(Instant::now());
        assert_eq!(table.remove(id), Some(true));
        assert_eq!(table.answer(id, 2).unwrap_err(), 2);
        assert_eq!(table.waiting(), 0);
        assert_eq!(table.kept_deadlines(), 0);
    }

    #[test]
    fn deadlines_expire_in_order_across_both_queues() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut table = Table::<_>::default();
        let (a, first) = table.insert(t0 + s(10));
        assert!(first, "no timer yet");
        assert_eq!(table.arm(), Some(t0 + s(10)));
        let (b, earlier_b) = table.insert(t0 + s(20));
        // Shorter than the last one: the heap; and earlier than the timer: move it up.
        let (c, earlier_c) = table.insert(t0 + s(5));
        assert_eq!(table.arm(), Some(t0 + s(5)));
        let (d, earlier_d) = table.insert(t0 + s(15));
        assert!(!earlier_b && earlier_c && !earlier_d);

        let (mut ids, mut wake) = (Vec::new(), Vec::new());
        let next = table.expire(t0 + s(4), || "late", &mut ids, &mut wake);
        assert!(ids.is_empty());
        assert_eq!(next, Some(t0 + s(5)));
        let next = table.expire(t0 + s(15), || "late", &mut ids, &mut wake);
        assert_eq!(ids, [c, a, d]);
        assert_eq!(table.waiting(), 1);
        assert_eq!(next, Some(t0 + s(20)));
        // b is answered first: its deadline passes without effect.
        assert!(table.answer(b, "ok").is_ok());
        ids.clear();
        let next = table.expire(t0 + s(30), || "late", &mut ids, &mut wake);
        assert!(ids.is_empty());
        assert_eq!(next, None);
        // No timer: the next request asks for one.
        assert!(table.insert(t0 + s(40)).1);
        let (_, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(table.poll_answer(a, &mut cx), Poll::Ready("late"));
        assert_eq!(table.poll_answer(b, &mut cx), Poll::Ready("ok"));
    }

    #[test]
    fn answered_deadlines_do_not_accumulate_behind_a_slow_request() {
        let t0 = Instant::now();
        let mut table = Table::<_>::default();
        let (slow, _) = table.insert(t0);
        for i in 0..100_000u64 {
            let (id, _) = table.insert(t0 + Duration::from_nanos(i + 1));
            table.answer(id, ()).unwrap();
            assert!(table.remove(id) == Some(false));
            assert!(table.kept_deadlines() <= 2 + COMPACT_SLACK + 1, "{i}");
        }
        assert_eq!(table.waiting(), 1);
        let (mut ids, mut wake) = (Vec::new(), Vec::new());
        table.expire(t0, || (), &mut ids, &mut wake);
        assert_eq!(ids, [slow]);
    }

    #[test]
    fn answer_all_answers_only_the_waiting() {
        let now = Instant::now();
        let mut table = Table::<_>::default();
        let (a, _) = table.insert(now);
        let (b, _) = table.insert(now);
        let (_, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert!(table.poll_answer(b, &mut cx).is_pending());
        table.answer(a, 0).unwrap();
        let mut wake = Vec::new();
        table.answer_all(|id| id * 10, &mut wake);
        assert_eq!(wake.len(), 1);
        assert_eq!(table.waiting(), 0);
        assert_eq!(table.poll_answer(a, &mut cx), Poll::Ready(0));
        assert_eq!(table.poll_answer(b, &mut cx), Poll::Ready(b * 10));
    }

    #[test]
    fn ids_skip_zero_and_ids_in_use_when_they_wrap() {
        let now = Instant::now();
        let mut table = Table::<()>::default();
        let (kept, _) = table.insert(now);
        assert_eq!(kept, 1);
        table.next_id = u32::MAX;
        let (last, _) = table.insert(now);
        let (wrapped, _) = table.insert(now);
        assert_eq!((last, wrapped), (u32::MAX, 2));
    }

    #[test]
    fn a_request_pending_for_many_laps_keeps_its_place_as_the_ring_grows() {
        let now = Instant::now();
        let mut table = Table::<u32>::default();
        let (_, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let (old, _) = table.insert(now);
        // Laps of the smallest ring, one request at a time: the old one's place is skipped.
        for _ in 0..1000 {
            let (id, _) = table.insert(now);
            assert_ne!(id, old);
            table.answer(id, id).unwrap();
            assert_eq!(table.poll_answer(id, &mut cx), Poll::Ready(id));
        }
        // Then hundreds at once: the ring grows, and each keeps its own answer.
        let ids: Vec<u32> = (0..500).map(|_| table.insert(now).0).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().chain([&old]).collect();
        assert_eq!(distinct.len(), 501);
        for &id in &ids {
            table.answer(id, id).unwrap();
        }
        table.answer(old, 7).unwrap();
        for &id in &ids {
            assert_eq!(table.poll_answer(id, &mut cx), Poll::Ready(id));
        }
        assert_eq!(table.poll_answer(old, &mut cx), Poll::Ready(7));
        assert_eq!(table.waiting(), 0);
    }
}
