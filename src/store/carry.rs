//! Outcome events carried by the relay thread that made them into the next journal
//! frame it appends, instead of each being sent to the journal's front.
//!
//! Under load a relay (HTTP) thread appends a durable batch to the journal itself every
//! pass over its ready tasks (see `super::batch` and `super::front`), while each
//! message's outcome event (the upstream's answer) went through the recorders' queue
//! to the front: a wake-up of another thread, and a frame of its own, for work the
//! relay thread was about to do anyway (0.5–0.9 µs a message in the front, and most
//! of the process's context switches). Now the thread keeps its events, each with the
//! place kept for it in the recorders' queue, and they go in the frame of the batch it
//! appends next. When no batch follows in the same pass, a task spawned on the thread
//! when the first event was kept runs after the pass (as a batch's owner does) and
//! appends them in a frame of their own, unless a batch of the store is open on the
//! thread then, whose frame takes them. So an event is queued within the pass it was
//! made in, as a durable batch is; one the journal cannot take (the front holds the
//! lock, the partitions are stuck, an append failed) goes to the front in its kept
//! place, as before.
//!
//! Only events that cannot overtake their records are carried: those of messages
//! whose records were journaled (durable) before they were forwarded, made on a
//! thread that said it relays ([`relay_thread`]) from its current-thread runtime (the
//! spawned task then runs on the same thread). An event about a message whose records
//! may still be queued (a commit timeout, async durability) goes through the queue
//! behind them. Events of one submission are all carried or all queued: SMPP's
//! receipts are written from the multi-threaded runtime, never carried.
//!
//! **Barriers.** A barrier (every record and event queued before it is committed) must
//! also cover the events relay threads carry, on whatever thread it runs: a client
//! answered by a relay thread can ask for one (`settle`, the admin API) before that
//! thread's pass ends. Each store counts the relay threads' carried sets in two
//! slots, by the parity of a carrying epoch taken when a set begins; a barrier moves
//! the epoch on and waits (at most `enqueue-timeout`) until the sets begun before it
//! are queued: within a pass of every relay thread. Sets begun after it are counted in
//! the other slot and not waited for; an event made before the barrier was asked for
//! is in a set counted before it (its set began when it was carried, and the client's
//! answer followed).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::front::Carried;
use super::partition::PartitionId;
use super::rows::OutcomeRow;
use super::writer::{Job, Signals};

/// Most outcome events a thread carries before it appends them at once.
const CARRY_MAX: usize = 256;

/// How often a barrier looks whether the sets it waits for are queued.
const BARRIER_POLL: Duration = Duration::from_millis(1);

/// A store's count of the relay threads' carried sets (see the module's documentation).
#[derive(Debug, Default)]
pub struct CarriedSets {
    epoch: AtomicU64,
    open: [AtomicUsize; 2],
}

impl CarriedSets {
    /// A set begins: counted in the current epoch's slot, which it returns.
    fn begin(&self) -> u64 {
        loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            self.open[slot(epoch)].fetch_add(1, Ordering::SeqCst);
            // A barrier that moved the epoch on meanwhile may have looked at the slot
            // already: count the set in the new one.
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return epoch;
            }
            self.open[slot(epoch)].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The set begun in `epoch` is queued.
    fn end(&self, epoch: u64) {
        self.open[slot(epoch)].fetch_sub(1, Ordering::SeqCst);
    }

    /// Moves the epoch on: returns the one whose sets a barrier waits for.
    fn next(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst)
    }

    /// Whether sets begun in `epoch` (or in the epoch two on, sharing its slot, when
    /// barriers follow each other) are still carried.
    fn waiting(&self, epoch: u64) -> bool {
        self.open[slot(epoch)].load(Ordering::SeqCst) > 0
    }
}

fn slot(epoch: u64) -> usize {
    (epoch & 1) as usize
}

/// The events one thread carries, all of one store (`set`).
struct Carrying {
    /// This thread said it relays ([`relay_thread`]).
    relay: bool,
    /// The store of the events carried, and the epoch their set is counted in; `None`
    /// when none are.
    set: Option<(Arc<Signals>, u64)>,
    events: Vec<Carried>,
    /// A task that flushes them is spawned and has not run yet.
    flush_due: bool,
}

impl Carrying {
    /// The set, taken: to be appended, or sent to the front when dropped.
    fn take(&mut self) -> Option<Taken> {
        let (signals, epoch) = self.set.take()?;
        Some(Taken {
            signals,
            epoch,
            events: std::mem::take(&mut self.events),
        })
    }
}

impl Drop for Carrying {
    /// The thread ends: what it still carries goes to the front.
    fn drop(&mut self) {
        drop(self.take());
    }
}

thread_local! {
    static CARRYING: RefCell<Carrying> = const {
        RefCell::new(Carrying {
            relay: false,
            set: None,
            events: Vec::new(),
            flush_due: false,
        })
    };
}

/// Runs `f` on this thread's carried set; `None` when the thread's slot is gone (its
/// thread-locals being torn down) or in use.
fn with_carrying<T>(f: impl FnOnce(&mut Carrying) -> T) -> Option<T> {
    CARRYING
        .try_with(|carrying| carrying.try_borrow_mut().ok().map(|mut c| f(&mut c)))
        .ok()
        .flatten()
}

/// Events taken from a thread's set. Dropped, those left (not appended) go to the
/// front in their kept places, and the set stops counting for barriers.
pub(super) struct Taken {
    signals: Arc<Signals>,
    epoch: u64,
    events: Vec<Carried>,
}

impl Taken {
    /// The events, for a frame to take (drained from it when appended).
    pub(super) fn events(&mut self) -> &mut Vec<Carried> {
        &mut self.events
    }

    /// Appends the events as a frame of their own from this thread; what the journal
    /// does not take goes to the front when `self` drops.
    fn append(mut self) {
        if let Some(appender) = self.signals.appender.get() {
            let signals = self.signals.clone();
            let _ = appender.try_append(&signals, None, &mut self.events);
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.events.drain(..).for_each(Carried::send);
        self.signals.carried.end(self.epoch);
    }
}

/// Marks this thread as a relay's own (an HTTP thread running a current-thread
/// runtime): the outcome events sent on it are carried (see the module's
/// documentation).
pub fn relay_thread() {
    with_carrying(|c| c.relay = true);
}

/// Carries an outcome event to the next frame this thread appends, or sends it to the
/// front at once when it may not be carried (see the module's documentation): the
/// caller knows its message's records were journaled before it was forwarded.
pub(super) fn carry(
    signals: &Arc<Signals>,
    permit: mpsc::OwnedPermit<Job>,
    partition: PartitionId,
    row: OutcomeRow,
) {
    let event = Carried {
        permit,
        partition,
        row,
    };
    let current_thread = || {
        tokio::runtime::Handle::try_current()
            .ok()
            .filter(|r| r.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
    };
    let runtime = match current_thread() {
        Some(runtime) if signals.appender.get().is_some_and(|a| a.relay_threads()) => runtime,
        _ => return event.send(),
    };
    let mut event = Some(event);
    // What to do once the thread's slot is let go: append another store's set or a
    // full one, spawn the task that flushes after the pass.
    let mut out: Vec<Taken> = Vec::new();
    let mut spawn = false;
    let carried = with_carrying(|c| {
        if !c.relay {
            return false;
        }
        if c.set
            .as_ref()
            .is_some_and(|(s, _)| !Arc::ptr_eq(s, signals))
        {
            // Another store's events (tests run many stores on one thread).
            out.extend(c.take());
        }
        if c.set.is_none() {
            c.set = Some((signals.clone(), signals.carried.begin()));
        }
        c.events.extend(event.take());
        if c.events.len() >= CARRY_MAX {
            out.extend(c.take());
        } else if !c.flush_due {
            c.flush_due = true;
            spawn = true;
        }
        true
    })
    .unwrap_or(false);
    if !carried {
        event.into_iter().for_each(Carried::send);
    }
    out.into_iter().for_each(Taken::append);
    if spawn {
        // Made before the task is spawned, so that a task dropped before it first runs
        // (its runtime shutting down) still flushes.
        let flush = FlushAfterPass;
        runtime.spawn(async move {
            let _flush = flush;
            tokio::task::yield_now().await;
        });
    }
}

/// The events this thread carries for the store of `signals`, taken (none when it
/// carries another store's or none).
pub(super) fn take(signals: &Arc<Signals>) -> Option<Taken> {
    with_carrying(|c| {
        if c.set.as_ref().is_some_and(|(s, _)| Arc::ptr_eq(s, signals)) {
            c.take()
        } else {
            None
        }
    })
    .flatten()
}

/// Appends (or sends to the front) every outcome event this thread carries, now.
pub fn flush() {
    if let Some(taken) = with_carrying(|c| {
        c.flush_due = false;
        c.take()
    })
    .flatten()
    {
        taken.append();
    }
}

/// Flushes what this thread carries when dropped (the task spawned for it has run, or
/// was dropped unrun), unless a batch of the same store is open on the thread: its
/// owner queues it within the pass, and its frame takes the events (one frame and one
/// `write` for the pass instead of two).
struct FlushAfterPass;

impl Drop for FlushAfterPass {
    fn drop(&mut self) {
        let taken = with_carrying(|c| {
            c.flush_due = false;
            let batched = c
                .set
                .as_ref()
                .is_some_and(|(s, _)| super::batch::open_here(s));
            if batched { None } else { c.take() }
        })
        .flatten();
        if let Some(taken) = taken {
            taken.append();
        }
    }
}

/// A barrier's (or a close's) wait for the events relay threads carry.
struct Wait<'a> {
    signals: &'a Signals,
    epoch: u64,
    deadline: Instant,
}

impl<'a> Wait<'a> {
    /// Flushes this thread's events and moves the epoch on.
    fn begin(signals: &'a Signals, limit: Duration) -> Self {
        flush();
        Wait {
            signals,
            epoch: signals.carried.next(),
            deadline: Instant::now() + limit,
        }
    }

    /// `Some(true)` once the sets begun before the wait are queued, `Some(false)` past
    /// its limit, `None` meanwhile.
    fn done(&self) -> Option<bool> {
        if !self.signals.carried.waiting(self.epoch) {
            Some(true)
        } else if Instant::now() >= self.deadline {
            Some(false)
        } else {
            None
        }
    }
}

/// Before a barrier or a close on any thread: flushes this thread's events, then waits
/// until every relay thread has queued the events it carried when this was called
/// (within a pass of each), for at most `limit`. Whether they were.
pub(super) async fn queued(signals: &Signals, limit: Duration) -> bool {
    let wait = Wait::begin(signals, limit);
    loop {
        if let Some(queued) = wait.done() {
            return queued;
        }
        tokio::time::sleep(BARRIER_POLL).await;
    }
}

/// [`queued`], for blocking callers.
pub(super) fn queued_blocking(signals: &Signals, limit: Duration) -> bool {
    let wait = Wait::begin(signals, limit);
    loop {
        if let Some(queued) = wait.done() {
            return queued;
        }
        std::thread::sleep(BARRIER_POLL);
    }
}
