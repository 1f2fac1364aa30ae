//! Durable submissions gathered per runtime thread: one job, one commit and one
//! wake-up of the writer for every submission a thread seals in one pass over its
//! ready tasks, instead of one each.
//!
//! The first durable submission sealed on a thread opens a [`Gathering`] and becomes
//! its owner. The owner yields once ([`tokio::task::yield_now`]): tokio defers it until
//! the worker next polls for I/O, which on a multi-thread runtime is after at most
//! about 61 other polls (tokio's `event_interval`) or when the worker runs out of
//! ready tasks. The submissions sealed meanwhile on the same thread, for the same store
//! and partition, join the batch. Then the owner appends the lot to the journal as one
//! frame and answers it ([`super::front::Appender::try_append`]), or, when it cannot,
//! queues it as one job for the journal's front (the owner may by then run on another
//! worker: the batch is behind a lock, and only its rows' thread of origin matters for
//! who joins). The batch is answered once; every submission of it waits for that
//! answer. On a current-thread runtime the same holds with its one thread. Off a
//! runtime's threads the yield returns at once, so a batch holds what the calling
//! task seals before it (usually one caller's).
//!
//! A thread-local slot rather than one per store: each worker gathers what it alone
//! seals in its own pass, with no lock shared between workers on the way in.
//!
//! Why: with a job per submission the writer woke for each one and committed a few
//! rows at a time (2.8 records per commit at 13,700 msg/s on one core, 39 µs a commit),
//! and where it shares a core with the runtime it preempted the worker on every wake-up.
//!
//! Nothing here decides whether a record is written: a gathered submission is answered
//! with its batch's commit result, or with an error (queue full, store closed, the
//! writer gone), and an error still means "do not forward". Only a batch in the
//! writer's queue can time out (`None` from [`Waiter::wait`]): its rows may still be
//! committed, as after any commit timeout, and the relay records the message as not
//! sent.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::partition::PartitionId;
use super::writer::{Done, Job, Row, Signals, WriteError};

/// Why a gathered batch was not committed.
#[derive(Debug, Clone)]
pub enum BatchError {
    Write(WriteError),
    QueueFull,
    Closed,
}

/// What every submission of a batch waits for: `None` until the batch is answered.
pub type Answer = Option<Result<(), BatchError>>;

thread_local! {
    /// The batch open on this thread, if any. Weak: a batch lives as long as its
    /// owner or one of its waiters holds it.
    static OPEN: RefCell<Weak<Gathering>> = const { RefCell::new(Weak::new()) };
}

/// Where a batch goes: the writer's queue, the signals that wake the writer (one set
/// per store: a batch never crosses stores, and a test process runs many on one
/// thread), and how long to wait for room in a full queue (`enqueue-timeout`).
#[derive(Clone)]
pub struct Route {
    pub tx: mpsc::Sender<Job>,
    pub signals: Arc<Signals>,
    pub wait: Duration,
}

/// A batch of durable submissions being gathered on one thread.
pub struct Gathering {
    partition: PartitionId,
    route: Route,
    /// The rows gathered so far; `None` once the batch is taken to be queued.
    pending: Mutex<Option<Pending>>,
    /// In the writer's queue (or answered): only then can a wait for it time out.
    queued: AtomicBool,
    answer: watch::Receiver<Answer>,
}

struct Pending {
    rows: Vec<Row>,
    submissions: usize,
    tell: watch::Sender<Answer>,
}

/// Adds the sealed rows of `submissions` submissions to the batch open on this thread
/// for the same store and `partition` if there is one with room for them (`max_rows`
/// rows in all), or opens one. `rows` is left empty.
///
/// Returns what to wait on, and the batch's [`Owner`] if this call opened it: the
/// caller then yields once and calls [`Owner::queue`].
pub fn join(
    partition: PartitionId,
    rows: &mut Vec<Row>,
    submissions: usize,
    max_rows: usize,
    route: &Route,
) -> (Waiter, Option<Owner>) {
    OPEN.with(|open| {
        let current = open
            .borrow()
            .upgrade()
            .filter(|g| g.partition == partition && Arc::ptr_eq(&g.route.signals, &route.signals));
        if let Some(g) = current {
            let mut pending = g.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = pending.as_mut()
                && p.rows.len() + rows.len() <= max_rows
            {
                p.rows.append(rows);
                p.submissions += submissions;
                route
                    .signals
                    .waiting
                    .fetch_add(submissions, Ordering::Relaxed);
                drop(pending);
                return (Waiter { gathering: g }, None);
            }
        }
        let (tell, answer) = watch::channel(None);
        let g = Arc::new(Gathering {
            partition,
            route: route.clone(),
            pending: Mutex::new(Some(Pending {
                rows: std::mem::take(rows),
                submissions,
                tell,
            })),
            queued: AtomicBool::new(false),
            answer,
        });
        route
            .signals
            .waiting
            .fetch_add(submissions, Ordering::Relaxed);
        *open.borrow_mut() = Arc::downgrade(&g);
        let owner = Owner(g.clone());
        (Waiter { gathering: g }, Some(owner))
    })
}

/// The owner of a batch: queues it when told to, or when dropped (an owner cancelled
/// during its yield must not strand the others).
pub struct Owner(Arc<Gathering>);

impl Owner {
    /// Closes the batch to newcomers and queues it (see `Gathering::flush`).
    pub fn queue(self) {
        self.0.flush();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// One submission's wait for its batch's answer.
pub struct Waiter {
    gathering: Arc<Gathering>,
}

impl Waiter {
    /// The batch's answer, waited for at most the queue's wait for room plus `commit`
    /// (the two waits a submission had before batches) from the time the batch is
    /// queued. A batch still not queued when that runs out (its owner was never polled
    /// again) is queued by this waiter, and waited for as any other: an owner cannot
    /// hold its members. `None` when a queued batch was not answered in time: its rows
    /// may still be committed, as after any commit timeout.
    pub async fn wait(self, commit: Duration) -> Option<Result<(), BatchError>> {
        let limit = self.gathering.route.wait + commit;
        let mut answer = self.gathering.answer.clone();
        // Answered already (the owner's own wait, once it appended the batch): no
        // timer to set and cancel.
        if let Some(answered) = answer.borrow().clone() {
            return Some(answered);
        }
        if let Ok(answer) = answer_within(&mut answer, limit).await {
            return answer;
        }
        if self.gathering.queued.load(Ordering::Acquire) {
            return None;
        }
        self.gathering.flush();
        answer_within(&mut answer, limit).await.unwrap_or(None)
    }
}

/// A batch's answer, if it comes within `limit`.
async fn answer_within(
    answer: &mut watch::Receiver<Answer>,
    limit: Duration,
) -> Result<Option<Result<(), BatchError>>, tokio::time::error::Elapsed> {
    let answer = tokio::time::timeout(limit, answer.wait_for(Option::is_some)).await?;
    Ok(match answer {
        Ok(answer) => answer.clone(),
        // Dropped unanswered: the writer stopped (or panicked, possibly after the
        // commit). Nothing can write an outcome now either.
        Err(_) => Some(Err(BatchError::Closed)),
    })
}

impl Gathering {
    /// Closes the batch to newcomers and journals it on this thread, or queues it,
    /// once (later calls do nothing): queued at once if the queue has room; otherwise
    /// from a task of its own that waits for room (at most `route.wait`, then refuses
    /// the batch), so that cancelling the caller cannot lose the batch afterwards.
    /// Such a task holds one batch for at most that long. Outside a runtime a full
    /// queue refuses the batch at once.
    fn flush(self: &Arc<Self>) {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(p) = taken else {
            return;
        };
        let Route { tx, signals, wait } = self.route.clone();
        signals.waiting.fetch_sub(p.submissions, Ordering::Relaxed);
        // The thread's slot may name another batch by now, or this flush may run on
        // another thread (the owner moved, or thread-locals are being torn down).
        let _ = OPEN.try_with(|open| {
            if let Ok(mut open) = open.try_borrow_mut()
                && std::ptr::eq(open.as_ptr(), Arc::as_ptr(self))
            {
                *open = Weak::new();
            }
        });
        // The thread that sealed the batch appends it to the journal itself when it
        // can: no other thread woken on the way (see `super::front`).
        let rows = match signals.appender.get() {
            Some(appender) => match appender.try_append(&signals, self.partition, p.rows) {
                Ok(()) => {
                    self.queued.store(true, Ordering::Release);
                    p.tell.send_replace(Some(Ok(())));
                    return;
                }
                Err(rows) => rows,
            },
            None => p.rows,
        };
        let job = Job::records(self.partition, rows, Some(Done::Many(p.tell)));
        match tx.try_send(job) {
            Ok(()) => {
                self.queued.store(true, Ordering::Release);
                signals.durable_queued();
            }
            Err(mpsc::error::TrySendError::Closed(job)) => refuse(job, BatchError::Closed),
            Err(mpsc::error::TrySendError::Full(job)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        let this = self.clone();
                        runtime.spawn(async move {
                            match tx.send_timeout(job, wait).await {
                                Ok(()) => {
                                    this.queued.store(true, Ordering::Release);
                                    signals.durable_queued();
                                }
                                Err(mpsc::error::SendTimeoutError::Timeout(job)) => {
                                    refuse(job, BatchError::QueueFull)
                                }
                                Err(mpsc::error::SendTimeoutError::Closed(job)) => {
                                    refuse(job, BatchError::Closed)
                                }
                            }
                        });
                    }
                    Err(_) => refuse(job, BatchError::QueueFull),
                }
            }
        }
    }
}

/// Answers every submission of a batch that was not queued.
fn refuse(job: Job, why: BatchError) {
    if let Job::Records {
        done: Some(Done::Many(tell)),
        ..
    } = job
    {
        tell.send_replace(Some(Err(why)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Granularity;

    fn route() -> (Route, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(4);
        let route = Route {
            tx,
            signals: Arc::new(Signals::default()),
            wait: Duration::from_millis(10),
        };
        (route, rx)
    }

    fn day(n: i64) -> PartitionId {
        PartitionId::containing(Granularity::Day, n * 86_400_000_000)
    }

    fn waiting(route: &Route) -> usize {
        route.signals.waiting.load(Ordering::Relaxed)
    }

    /// A batch is joined only by submissions of its own store and partition.
    #[test]
    fn batches_never_cross_stores_or_partitions() {
        let (a, _rx_a) = route();
        let (b, _rx_b) = route();
        let (_w, owner) = join(day(1), &mut Vec::new(), 1, 8, &a);
        assert!(owner.is_some(), "the first opens a batch");
        let (_w, member) = join(day(1), &mut Vec::new(), 1, 8, &a);
        assert!(member.is_none(), "same store and day: joins");
        let (_w, other_store) = join(day(1), &mut Vec::new(), 1, 8, &b);
        assert!(other_store.is_some(), "another store opens its own");
        let (_w, other_day) = join(day(2), &mut Vec::new(), 1, 8, &a);
        assert!(other_day.is_some(), "another partition opens its own");
        assert_eq!((waiting(&a), waiting(&b)), (3, 1));
    }

    /// An owner that is never polled again (nor dropped) cannot hold its members: the
    /// first whose wait runs out queues the batch itself, once.
    #[tokio::test]
    async fn a_waiter_that_runs_out_queues_the_batch_itself() {
        let (r, mut rx) = route();
        let (_owner_wait, owner) = join(day(1), &mut Vec::new(), 1, 8, &r);
        let (member, none) = join(day(1), &mut Vec::new(), 1, 8, &r);
        assert!(owner.is_some() && none.is_none());
        assert!(
            member.wait(Duration::from_millis(10)).await.is_none(),
            "ran out"
        );
        assert_eq!(waiting(&r), 0);
        assert!(matches!(
            rx.try_recv(),
            Ok(Job::Records {
                done: Some(Done::Many(_)),
                ..
            })
        ));
        drop(owner);
        assert!(rx.try_recv().is_err(), "queued once");
    }

    /// A waiter whose batch was never queued does not answer "timed out" (which says
    /// the rows may be committed): it queues the batch, and here, the queue being
    /// full for good, gets the refusal.
    #[tokio::test]
    async fn a_batch_never_queued_is_refused_not_timed_out() {
        let (r, _rx) = route();
        for _ in 0..4 {
            r.tx.try_send(Job::Tick).unwrap();
        }
        let (_owner_wait, owner) = join(day(1), &mut Vec::new(), 1, 8, &r);
        let (member, _) = join(day(1), &mut Vec::new(), 1, 8, &r);
        assert!(matches!(
            member.wait(Duration::from_millis(10)).await,
            Some(Err(BatchError::QueueFull))
        ));
        drop(owner);
    }

    /// A batch that cannot be queued (the writer is gone) is answered with the error,
    /// never with success.
    #[tokio::test]
    async fn a_batch_with_no_writer_is_refused() {
        let (r, rx) = route();
        drop(rx);
        let (waiter, owner) = join(day(1), &mut Vec::new(), 1, 8, &r);
        owner.expect("opened").queue();
        assert!(matches!(
            waiter.wait(Duration::from_millis(10)).await,
            Some(Err(BatchError::Closed))
        ));
    }
}
