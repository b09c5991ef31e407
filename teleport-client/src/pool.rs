//! The pool: connections to every upstream, picked by least pending with passive health, and
//! one task per connection slot that connects, reconnects with backoff, and replaces a
//! connection that goes away.
//!
//! ```text
//!  send ─▶ pick: two random slots, the one with fewer pending (+ its upstream's failures) wins
//!             │ none has room: wait (or fail fast); none is up: wait for a connection
//!  slot task: connect ─▶ publish ─▶ run until retired (goaway, loss) ─▶ connect again
//!                 └─ failure: record on the upstream, back off with jitter, try again
//! ```

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teleport_transport::conn::{Conn, Parts};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::BoxIo;
use crate::conn::{self, Backoff, ConnHandle};
use crate::tls::{host_of, parse_server_name};
use crate::{ClientBuilder, Error};

/// Failures an upstream's load is charged with, per consecutive failure.
const FAILURE_PENALTY: usize = 8;
/// An upstream's failures stop being charged as load once none has come for this long (they
/// still count toward ejection, until a success). Without it, an upstream that recovered a
/// few failures short of ejection would, at light load, never be picked again, and so never
/// have the success that clears them; one still failing fails again when picked, and is
/// ejected in the end.
const FAILURE_FADE_MS: u64 = 1_000;
/// A connection that lived less than this before it ended counts as a failed attempt.
const MIN_HEALTHY_LIFE: Duration = Duration::from_secs(1);
/// The first ejection's length; each ejection in a row doubles it, up to `EJECT_MAX`.
const EJECT_BASE: Duration = Duration::from_secs(1);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// What the client shares with its tasks.
pub(crate) struct Inner {
    pub(crate) config: ClientBuilder,
    slots: Vec<Slot>,
    /// Wakes everyone waiting for a connection or for room (a connection came up, or an
    /// attempt failed), and [`connected`](Self::connected).
    changed: Notify,
    /// Wakes requests waiting for room, one per request slot freed: waking them all at every
    /// completion would cost each completion a pick by every waiting request.
    room: Notify,
    /// Requests waiting for room or for a connection.
    waiters: AtomicUsize,
    /// Cancelled when the last client handle is dropped.
    pub(crate) token: CancellationToken,
    started: Instant,
}

/// One upstream address and its health.
pub(crate) struct Upstream {
    pub(crate) addr: Arc<str>,
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// Ejections in a row.
    ejections: AtomicU32,
    /// Ejected until this many milliseconds after the client started (0: not ejected).
    ejected_until_ms: std::sync::atomic::AtomicU64,
    /// When the latest failure was counted, in milliseconds after the client started.
    last_failure_ms: std::sync::atomic::AtomicU64,
}

struct Slot {
    upstream: Arc<Upstream>,
    conn: Mutex<Option<Arc<ConnHandle>>>,
    /// This slot's latest failed connection attempt, cleared by a successful one. Per slot:
    /// one slot's failed attempt says nothing of another slot of the same upstream, which may
    /// be connected, or reconnecting.
    last_error: Mutex<Option<(Instant, Arc<Error>)>>,
}

/// What a pick found.
pub(crate) enum Pick {
    Conn(Arc<ConnHandle>),
    /// Connections are up, but every one is full.
    Full,
    /// No connection is up.
    Down,
}

impl Upstream {
    fn new(addr: &str) -> Self {
        Self {
            addr: addr.into(),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: Default::default(),
            last_failure_ms: Default::default(),
        }
    }

    pub(crate) fn record_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 {
            self.ejections.store(0, Relaxed);
        }
    }

    /// Counts a failure; the one that makes `eject_after` in a row ejects the upstream.
    /// Failures while it is ejected are not counted: they are the tail of the burst that
    /// ejected it (requests that were in flight then), and counting them would eject it again
    /// at once, for twice as long each time.
    pub(crate) fn record_failure(&self, inner: &Inner) {
        if self.is_ejected(inner) {
            return;
        }
        self.last_failure_ms.store(inner.elapsed_ms(), Relaxed);
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        // Exactly at the threshold (never, with 0): of failures counted at once, one ejects.
        if failures != inner.config.eject_after {
            return;
        }
        let ejections = self.ejections.fetch_add(1, Relaxed);
        let length = EJECT_BASE
            .saturating_mul(1 << ejections.min(16))
            .min(EJECT_MAX);
        let until = inner.elapsed_ms() + length.as_millis() as u64;
        self.ejected_until_ms.store(until, Relaxed);
        self.failures.store(0, Relaxed);
        tracing::warn!(addr = %self.addr, ?length, "upstream ejected after {failures} failures in a row");
    }

    /// Reads the clock only while an ejection is on record: picks look at this for every
    /// request.
    fn is_ejected(&self, inner: &Inner) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        if until == 0 {
            return false;
        }
        if until > inner.elapsed_ms() {
            return true;
        }
        // Over: off the record (unless a newer ejection replaced it meanwhile).
        let _ = self
            .ejected_until_ms
            .compare_exchange(until, 0, Relaxed, Relaxed);
        false
    }

    /// Reads the clock only while failures are on record.
    fn penalty(&self, inner: &Inner) -> usize {
        let failures = self.failures.load(Relaxed) as usize;
        if failures == 0
            || inner
                .elapsed_ms()
                .saturating_sub(self.last_failure_ms.load(Relaxed))
                >= FAILURE_FADE_MS
        {
            return 0;
        }
        failures * FAILURE_PENALTY
    }
}

impl Inner {
    pub(crate) fn new(config: ClientBuilder) -> Self {
        let upstreams: Vec<_> = config
            .addrs
            .iter()
            .map(|addr| Arc::new(Upstream::new(addr)))
            .collect();
        let slots = upstreams
            .iter()
            .flat_map(|upstream| {
                (0..config.conns_per_addr).map(|_| Slot {
                    upstream: upstream.clone(),
                    conn: Mutex::new(None),
                    last_error: Mutex::new(None),
                })
            })
            .collect();
        Self {
            config,
            slots,
            changed: Notify::new(),
            room: Notify::new(),
            waiters: AtomicUsize::new(0),
            token: CancellationToken::new(),
            started: Instant::now(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `freed` requests finished or gave up: wake as many of those waiting for room. A woken
    /// request that finds the room taken (by one that did not wait) waits again, and the
    /// completion of the one that took it wakes a request in turn.
    pub(crate) fn capacity_freed(&self, freed: usize) {
        let waiters = self.waiters.load(SeqCst);
        for _ in 0..freed.min(waiters) {
            self.room.notify_one();
        }
    }

    /// The connections up now.
    pub(crate) fn conns(&self) -> Vec<Arc<ConnHandle>> {
        self.slots
            .iter()
            .filter_map(|slot| slot.current())
            .collect()
    }

    /// Picks the connection for one request: power of two choices by pending requests, an
    /// upstream's recent failures counted as extra load, ejected upstreams left out unless
    /// nothing else has room.
    pub(crate) fn try_pick(&self) -> Pick {
        let n = self.slots.len();
        let score = |slot: &Slot| -> Option<(usize, Arc<ConnHandle>)> {
            let conn = slot.current()?;
            let load = conn.load()?;
            if slot.upstream.is_ejected(self) {
                return None;
            }
            Some((load + slot.upstream.penalty(self), conn))
        };
        if n == 1 {
            if let Some((_, conn)) = score(&self.slots[0]) {
                return Pick::Conn(conn);
            }
        } else {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            match (score(&self.slots[a]), score(&self.slots[b])) {
                (Some(x), Some(y)) => return Pick::Conn(if x.0 <= y.0 { x.1 } else { y.1 }),
                (Some(x), None) | (None, Some(x)) => return Pick::Conn(x.1),
                (None, None) => {}
            }
        }
        // Both choices were down, full or ejected: look at every slot, ejected ones last.
        let mut best: Option<(bool, usize, Arc<ConnHandle>)> = None;
        let mut any_up = false;
        for slot in &self.slots {
            let Some(conn) = slot.current() else { continue };
            any_up |= !conn.is_retired();
            let Some(load) = conn.load() else { continue };
            let key = (
                slot.upstream.is_ejected(self),
                load + slot.upstream.penalty(self),
            );
            if best.as_ref().is_none_or(|b| key < (b.0, b.1)) {
                best = Some((key.0, key.1, conn));
            }
        }
        match best {
            Some((_, _, conn)) => Pick::Conn(conn),
            None if any_up => Pick::Full,
            None => Pick::Down,
        }
    }

    /// Picks a connection, waiting for room or for a connection: for a request that found
    /// none with [`try_pick`](Self::try_pick). `down` tells the caller's timeout whether the
    /// wait was for a connection.
    pub(crate) async fn pick(&self, down: &mut bool) -> Result<Arc<ConnHandle>, Error> {
        loop {
            // Count ourselves before looking, so a completion between the look and the wait
            // wakes us; uncounted when done, or dropped (the request's deadline passed).
            self.waiters.fetch_add(1, SeqCst);
            let _waiting = Uncount(&self.waiters);
            // A notification for room that this request does not take up (it gives up, or
            // returns woken by the other) passes to the next waiting request when dropped.
            let changed = self.changed.notified();
            let room = self.room.notified();
            tokio::pin!(changed, room);
            changed.as_mut().enable();
            room.as_mut().enable();
            let pick = self.try_pick();
            let result = match pick {
                Pick::Conn(conn) => Some(Ok(conn)),
                Pick::Full if self.config.fail_fast => Some(Err(Error::Overloaded)),
                Pick::Down if !self.config.wait_for_ready && self.all_failing() => {
                    Some(Err(Error::Unavailable {
                        source: self.last_error(),
                    }))
                }
                _ if self.token.is_cancelled() => Some(Err(Error::Closed)),
                Pick::Full => {
                    *down = false;
                    None
                }
                Pick::Down => {
                    *down = true;
                    None
                }
            };
            if let Some(result) = result {
                return result;
            }
            tokio::select! {
                () = changed => {}
                () = room => {}
            }
        }
    }

    /// Waits until a connection is up and taking requests.
    pub(crate) async fn connected(&self) {
        loop {
            // Enabled before looking, so a connection published between the look and the wait
            // wakes us (every publication notifies).
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .slots
                .iter()
                .any(|slot| slot.current().is_some_and(|conn| !conn.is_retired()))
            {
                return;
            }
            notified.await;
        }
    }

    /// Every upstream's latest connection attempt failed.
    fn all_failing(&self) -> bool {
        self.slots.iter().all(|slot| slot.error().is_some())
    }

    /// The latest failed connection attempt of any slot, unless it has connected since.
    pub(crate) fn last_error(&self) -> Option<Arc<Error>> {
        self.slots
            .iter()
            .filter_map(Slot::error)
            .max_by_key(|(at, _)| *at)
            .map(|(_, error)| error)
    }

    /// Starts one task per slot.
    pub(crate) fn spawn_slots(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        for index in 0..self.slots.len() {
            runtime.spawn(run_slot(self.clone(), index));
        }
    }
}

impl Slot {
    fn current(&self) -> Option<Arc<ConnHandle>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, conn: Option<Arc<ConnHandle>>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }

    fn error(&self) -> Option<(Instant, Arc<Error>)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, error: Option<Error>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            error.map(|error| (Instant::now(), Arc::new(error)));
    }
}

/// Keeps one slot connected until the client is dropped.
async fn run_slot(inner: Arc<Inner>, index: usize) {
    let slot = &inner.slots[index];
    let upstream = slot.upstream.clone();
    let mut backoff = Backoff::new(inner.config.backoff_min, inner.config.backoff_max);
    loop {
        let attempt = tokio::select! {
            () = inner.token.cancelled() => return,
            attempt = tokio::time::timeout(inner.config.connect_timeout, connect(&inner, &upstream.addr)) => attempt,
        };
        let attempt = attempt.unwrap_or_else(|_| {
            Err(Error::Connect {
                addr: upstream.addr.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection attempt timed out",
                ),
            })
        });
        let healthy = match attempt {
            Ok(conn) => {
                slot.set_error(None);
                let Parts {
                    reader,
                    writer,
                    sender,
                    queue,
                } = conn.into_parts();
                let handle = Arc::new(ConnHandle::new(
                    sender,
                    upstream.clone(),
                    inner.config.max_pending,
                ));
                let opened = Instant::now();
                let (retired_tx, retired_rx) = oneshot::channel();
                tokio::spawn(conn::run(
                    handle.clone(),
                    reader,
                    writer,
                    queue,
                    inner.clone(),
                    retired_tx,
                ));
                slot.set(Some(handle));
                inner.changed.notify_waiters();
                // Until it takes no new requests; it drains on its own meanwhile.
                let _ = retired_rx.await;
                slot.set(None);
                opened.elapsed() >= MIN_HEALTHY_LIFE
            }
            Err(error) => {
                tracing::debug!(addr = %upstream.addr, %error, "connection attempt failed");
                slot.set_error(Some(error));
                upstream.record_failure(&inner);
                // Requests waiting for a connection may have to give up now.
                inner.changed.notify_waiters();
                false
            }
        };
        if healthy {
            backoff.reset();
            continue;
        }
        tokio::select! {
            () = inner.token.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

/// One connection attempt: TCP (or the custom connector), TLS when configured, the teleport
/// handshake.
async fn connect(inner: &Inner, addr: &Arc<str>) -> Result<Conn<BoxIo>, Error> {
    let config = &inner.config;
    let connect_error = |source| Error::Connect {
        addr: addr.clone(),
        source,
    };
    let io: BoxIo = match &config.connector {
        Some(connector) => connector.connect(addr).await.map_err(connect_error)?,
        None => {
            let tcp = TcpStream::connect(&**addr).await.map_err(connect_error)?;
            tcp.set_nodelay(true).map_err(connect_error)?;
            Box::new(tcp)
        }
    };
    let io: BoxIo = match &config.tls {
        None => io,
        Some(tls) => {
            let name = match &tls.server_name {
                Some(name) => name.clone(),
                None => parse_server_name(host_of(addr))?,
            };
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let stream = connector
                .connect(name, io)
                .await
                .map_err(|source| Error::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            Box::new(stream)
        }
    };
    Conn::connect(io, &config.conn)
        .await
        .map_err(|source| match source {
            // In TLS 1.3 the server checks the client's certificate after the client's side of
            // the TLS handshake is done: its refusal is an alert read here.
            teleport_transport::Error::Read(source) | teleport_transport::Error::Write(source)
                if source.get_ref().is_some_and(|e| e.is::<rustls::Error>()) =>
            {
                Error::Tls {
                    addr: addr.clone(),
                    source,
                }
            }
            source => Error::Handshake {
                addr: addr.clone(),
                source,
            },
        })
}

/// Takes one off a count when dropped.
struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_upstream(eject_after: u32) -> Inner {
        let mut config = ClientBuilder::default();
        config.addr("upstream").eject_after(eject_after);
        Inner::new(config)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_ejects_once_for_the_base_length() {
        let inner = one_upstream(5);
        let upstream = &inner.slots[0].upstream;
        let start = inner.elapsed_ms();
        // Requests in flight when the upstream fails all fail within the same moment.
        for _ in 0..40 {
            upstream.record_failure(&inner);
        }
        assert_eq!(upstream.ejections.load(Relaxed), 1);
        let ejected_for = upstream.ejected_until_ms.load(Relaxed) - start;
        assert_eq!(ejected_for, EJECT_BASE.as_millis() as u64);
        assert_eq!(
            upstream.penalty(&inner),
            0,
            "failures counted while ejected"
        );

        // Its time up, failing again ejects it again, for twice as long.
        tokio::time::advance(EJECT_BASE).await;
        assert!(!upstream.is_ejected(&inner));
        for _ in 0..4 {
            upstream.record_failure(&inner);
        }
        assert!(!upstream.is_ejected(&inner));
        assert_eq!(upstream.penalty(&inner), 4 * FAILURE_PENALTY);
        let now = inner.elapsed_ms();
        upstream.record_failure(&inner);
        assert_eq!(upstream.ejections.load(Relaxed), 2);
        assert_eq!(
            upstream.ejected_until_ms.load(Relaxed) - now,
            2 * EJECT_BASE.as_millis() as u64
        );

        // One success clears the record.
        upstream.record_success();
        assert_eq!(upstream.ejections.load(Relaxed), 0);
        assert_eq!(upstream.penalty(&inner), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_stop_weighing_after_a_quiet_second_but_still_eject() {
        let inner = one_upstream(5);
        let upstream = &inner.slots[0].upstream;
        for _ in 0..4 {
            upstream.record_failure(&inner);
        }
        assert_eq!(upstream.penalty(&inner), 4 * FAILURE_PENALTY);
        // Quiet: it is charged nothing (and so is picked again at light load)...
        tokio::time::advance(Duration::from_millis(FAILURE_FADE_MS)).await;
        assert_eq!(upstream.penalty(&inner), 0);
        // ... and failing again, the fifth failure in a row, however spread out, ejects it.
        upstream.record_failure(&inner);
        assert!(upstream.is_ejected(&inner));
    }

    #[test]
    fn eject_after_zero_never_ejects_but_counts_failures_as_load() {
        let inner = one_upstream(0);
        let upstream = &inner.slots[0].upstream;
        for _ in 0..100 {
            upstream.record_failure(&inner);
        }
        assert_eq!(upstream.ejections.load(Relaxed), 0);
        assert!(!upstream.is_ejected(&inner));
        assert_eq!(upstream.penalty(&inner), 100 * FAILURE_PENALTY);
    }
}
