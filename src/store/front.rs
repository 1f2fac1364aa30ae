//! The journal's front: the thread that takes the recorders' queue when the store has a
//! journal (see [`super::journal`]). It reads the journal back at start, then appends
//! each group of jobs to it in one write, answers those waiting, and passes the group
//! to the writer ([`super::writer`]), which puts the rows into the partitions.
//!
//! A durable batch does not need the front: the relay thread that sealed it appends
//! it as a frame of its own and answers its clients there ([`Appender::try_append`]),
//! with no wake-up of another thread on the way. Two hops per batch (the front woken,
//! then the relay thread woken back) cost more than the append: on two cores, the
//! front's wake-ups preempted the relay threads some 2,000 times a second. The
//! journal and the writer's queue sit behind one lock, taken by whoever appends, so
//! frames reach the writer in the order of their numbers (which the writer's record
//! of the frames a partition holds relies on). A relay thread only tries the lock: if
//! the front or another thread holds it, or anything else stands in the way (the
//! writer's queue full, the partitions stuck, `sync = "full"`, an append failed, the
//! segment full or due for rotation), the batch goes to the front as before.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::journal::{self, EntryRef, Journal};
use super::partition::PartitionId;
use super::rows::Row;
use super::writer::{Expired, Job, Pace, Signals, gather, io};
use crate::metrics::Metrics;

/// The journal and the writer's queue, shared by the front and the relay threads (see
/// the module's documentation).
pub(super) struct Appender {
    /// `None` once the front has ended: the journal (and its lock) and the writer's
    /// queue are then let go, so that the writer ends and the store can be opened
    /// again.
    shared: Mutex<Option<Shared>>,
    /// Relay threads may append (not with `sync = "full"`: a `fdatasync` per batch
    /// would hold a relay thread, and every connection on it, for the disk).
    relay_threads: bool,
    /// A relay thread's last append failed (logged once until one works).
    relay_failing: AtomicBool,
    journal_dir: PathBuf,
    metrics: Arc<Metrics>,
}

struct Shared {
    journal: Journal,
    /// The writer's one queue: every frame goes to it under the lock, in order.
    to_writer: mpsc::Sender<Job>,
    /// Relay threads may append: the front has read the journal back, and no append
    /// failed since its own last one worked. Cleared by a failed relay append and by a
    /// stop.
    taking: bool,
}

impl Appender {
    pub(super) fn new(
        journal: Journal,
        to_writer: mpsc::Sender<Job>,
        relay_threads: bool,
        metrics: Arc<Metrics>,
    ) -> Appender {
        Appender {
            journal_dir: journal.dir().to_owned(),
            shared: Mutex::new(Some(Shared {
                journal,
                to_writer,
                taking: false,
            })),
            relay_threads,
            relay_failing: AtomicBool::new(false),
            metrics,
        }
    }

    /// Appends a durable batch's rows as one frame and passes them to the writer, from
    /// the thread that sealed them: `Ok` once they are in the journal (their clients
    /// may be answered). The rows back when the front must take them instead. Never
    /// waits for the lock or for room in the writer's queue, and never makes a file
    /// (a new segment is the front's to start): what it costs the calling thread is a
    /// `stat` of the segment's path and one `write`, into the page cache (which can
    /// hold the thread when the kernel throttles writers of dirty pages, as it would
    /// hold the front).
    pub(super) fn try_append(
        &self,
        signals: &Signals,
        partition: PartitionId,
        rows: Vec<Row>,
    ) -> Result<(), Vec<Row>> {
        if !self.relay_threads || bypassing(signals, &self.metrics) {
            return Err(rows);
        }
        let mut guard = match self.shared.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(rows),
        };
        let Some(shared) = guard.as_mut().filter(|s| s.taking) else {
            return Err(rows);
        };
        let Ok(permit) = shared.to_writer.try_reserve() else {
            return Err(rows);
        };
        let started = Instant::now();
        match shared
            .journal
            .append_in_place(std::iter::once(EntryRef::Records(partition, &rows)))
        {
            Ok(frame) => {
                let records = rows.len();
                permit.send(Job::Frame(vec![Job::Records {
                    partition,
                    rows,
                    done: None,
                    frame,
                }]));
                signals.journal_unrotated.store(true, Ordering::Relaxed);
                drop(guard);
                self.appended(started, records);
                self.metrics.journal_relay_frames.inc();
                if self.relay_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("relay threads append to the journal again");
                }
                Ok(())
            }
            // A new segment is the front's to start: it takes these rows.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(rows),
            Err(e) => {
                // The front takes these rows, and relay threads append again once
                // the front's own append has worked.
                drop(permit);
                shared.taking = false;
                drop(guard);
                self.metrics.store_errors.inc();
                if !self.relay_failing.swap(true, Ordering::Relaxed) {
                    let e = io(&self.journal_dir, e);
                    tracing::error!(reason = e.reason(), error = %e, "a relay thread's journal append failed; its batch goes through the journal's thread");
                }
                Err(rows)
            }
        }
    }

    /// Counts a frame appended in `started.elapsed()` holding `records` records.
    fn appended(&self, started: Instant, records: usize) {
        self.metrics
            .journal_append_seconds
            .observe(started.elapsed().as_secs_f64());
        if records > 0 {
            self.metrics.journal_frame_records.observe(records as f64);
        }
    }

    /// Tests: every append fails (or works again).
    #[cfg(test)]
    pub(super) fn fail_appends(&self, fail: bool) {
        if let Some(shared) = self.lock().as_mut() {
            shared.journal.fail_appends = fail;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Shared>> {
        // A panic while it was held left the journal as it would after a failed
        // append: whole frames, and nothing acknowledged past them.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `job` to the writer after every frame appended so far. False when the
    /// front has ended or the writer is gone.
    fn send(&self, job: Job) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|shared| shared.to_writer.blocking_send(job).is_ok())
    }
}

/// Whether rows that clients wait on bypass the journal now (the partitions are stuck
/// or failing), said in `journal_bypassed` by whoever asks, the front or a relay
/// thread (written only when it changes: relay threads ask at every batch).
fn bypassing(signals: &Signals, metrics: &Metrics) -> bool {
    let stuck = signals.partitions_stuck();
    if metrics.journal_bypassed.get() != i64::from(stuck) {
        metrics.journal_bypassed.set(i64::from(stuck));
    }
    stuck
}

/// The journal's front: takes the recorders' queue, appends each group of jobs to the
/// journal in one write, passes the group to the writer whole and answers those
/// waiting (before passing it, when the writer's queue has no room for it). A group
/// the journal could not take goes to the writer with its waiters, who are answered
/// when it commits, as they were before there was a journal.
pub(super) struct Front {
    appender: Arc<Appender>,
    signals: Arc<Signals>,
    metrics: Arc<Metrics>,
    pace: Pace,
    /// The last append failed (logged once until one succeeds).
    append_failing: bool,
    /// The last rotation failed (logged once until one succeeds).
    rotate_failing: bool,
    expired: Option<Expired>,
    clock: crate::clock::SharedClock,
}

impl Drop for Front {
    fn drop(&mut self) {
        // However the front ends: no relay thread appends after it, and the journal
        // and the writer's queue go with it.
        self.appender.lock().take();
    }
}

impl Front {
    pub(super) fn new(
        appender: Arc<Appender>,
        signals: Arc<Signals>,
        metrics: Arc<Metrics>,
        pace: Pace,
        expired: Option<Expired>,
        clock: crate::clock::SharedClock,
    ) -> Front {
        Front {
            appender,
            signals,
            metrics,
            pace,
            append_failing: false,
            rotate_failing: false,
            expired,
            clock,
        }
    }

    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        segments: Vec<PathBuf>,
        replayed: std::sync::mpsc::SyncSender<std::io::Result<()>>,
    ) {
        // What the partitions may not hold yet goes in before anything new, and before
        // the store is open: expiry, queries and erasure at start see it.
        let replay = match self.replay(&segments) {
            Ok(replay) => replay,
            Err(e) => {
                let _ = replayed.send(Err(e));
                return;
            }
        };
        if replay.frames > 0 {
            match self.wait_for_writer() {
                Some(Ok(())) => tracing::info!(
                    frames = replay.frames,
                    "journal frames a stopped relaylog left are in the partitions"
                ),
                Some(Err(e)) => {
                    tracing::error!(reason = e.reason(), error = %e, "journal frames could not all be put into the partitions at start; they stay in the journal and are tried again")
                }
                None => return,
            }
        }
        {
            let mut shared = self.appender.lock();
            let Some(shared) = shared.as_mut() else {
                return;
            };
            match shared.journal.start(replay.last) {
                Ok(first) => self.signals.first_new.store(first, Ordering::SeqCst),
                Err(e) => {
                    let _ = replayed.send(Err(e));
                    return;
                }
            }
            shared.taking = self.appender.relay_threads;
        }
        let _ = replayed.send(Ok(()));
        let mut jobs = Vec::with_capacity(1024);
        loop {
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            let stop = if matches!(first, Job::Tick) {
                jobs.push(first);
                false
            } else {
                let stop = gather(
                    &mut rx,
                    &mut jobs,
                    first,
                    self.pace,
                    &self.signals,
                    &self.signals.front,
                );
                self.metrics.queue_depth.set(rx.len() as i64);
                stop
            };
            if stop {
                self.signals.request_stop();
            }
            if !self.pass(&mut jobs) || stop {
                return;
            }
        }
    }

    /// Passes every whole frame of `segments` to the writer, in order, but for rows of
    /// partitions expiry removed (see [`WriterConfig::expired`]).
    fn replay(&mut self, segments: &[PathBuf]) -> std::io::Result<Replay> {
        let mut replay = Replay {
            frames: 0,
            last: 0,
            dropped: 0,
        };
        let expired = self.expired.clone();
        let now = self.clock.now_micros();
        for path in segments {
            let mut gone = false;
            let mut failed = None;
            let whole = journal::read_segment(path, |frame| {
                replay.frames += 1;
                replay.last = replay.last.max(frame.seq);
                let mut jobs = Vec::with_capacity(frame.entries.len());
                for entry in frame.entries {
                    let removed = match &expired {
                        Some(x) => x.removed(entry.partition(), now),
                        None => Ok(false),
                    };
                    match removed {
                        Ok(true) => replay.dropped += 1,
                        Ok(false) => jobs.push(entry.into_job(frame.seq)),
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                }
                if jobs.is_empty() {
                    return true;
                }
                gone = !self.appender.send(Job::Frame(jobs));
                !gone
            })
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("journal segment {}: {e}", path.display()))
            })?;
            if let Some(e) = failed {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot tell whether a partition in the journal expired: its key file: {e}"
                    ),
                ));
            }
            if gone {
                return Err(std::io::Error::other(
                    "the writer stopped while the journal was read back",
                ));
            }
            if !whole {
                self.metrics.store_errors.inc();
                tracing::error!(segment = %path.display(), "journal segment ends in a frame that is not whole (a write cut short by a crash, or damage); the whole frames before it are put into the partitions");
            }
        }
        if replay.dropped > 0 {
            tracing::warn!(
                entries = replay.dropped,
                "journal entries of partitions expiry removed dropped"
            );
        }
        Ok(replay)
    }

    /// Journals `jobs` and passes them on, in order. False when the writer is gone.
    ///
    /// While the partitions are stuck or failing, rows that wait (durable records) do
    /// not go to the journal: the writer commits them and answers their clients, one
    /// batch at a time, so that the recorders' queue fills as it would without a
    /// journal and clients hear why. Rows no one waits on (outcomes, async records)
    /// still go to the journal, where a crash does not lose them.
    fn pass(&mut self, jobs: &mut Vec<Job>) -> bool {
        let direct = bypassing(&self.signals, &self.metrics);
        let stop = jobs.iter().any(|j| matches!(j, Job::Stop));
        // Held until the frame is in the writer's queue: a relay thread's frame goes
        // wholly before or after it.
        let appender = self.appender.clone();
        let mut guard = appender.lock();
        let Some(shared) = guard.as_mut() else {
            return false;
        };
        if shared.journal.due_for_rotation() {
            self.rotate(&mut shared.journal);
        }
        let to_journal = |j: &Job| {
            matches!(j, Job::Records { .. } | Job::Outcome { .. }) && !(direct && j.waited_on())
        };
        let journaled = if jobs.iter().any(to_journal) {
            self.append(&mut shared.journal, jobs, to_journal)
        } else {
            None
        };
        if stop {
            // Before a clean stop, the frames so far (this one too) go into segments
            // the writer deletes once it has them all in.
            self.rotate(&mut shared.journal);
        }
        self.signals
            .journal_unrotated
            .store(shared.journal.holds_frames(), Ordering::Relaxed);
        let mut frame = Vec::new();
        let mut after = Vec::new();
        // Answered once they are in the journal (after the lock is let go); the
        // writer woken only for what still waits on it.
        let mut answer = Vec::new();
        let mut wake = false;
        let mut waiting_rows = false;
        for job in jobs.drain(..) {
            let seq = journaled.filter(|_| to_journal(&job));
            match (seq, job) {
                (
                    Some(seq),
                    Job::Records {
                        partition,
                        rows,
                        done,
                        ..
                    },
                ) => {
                    answer.extend(done);
                    frame.push(Job::Records {
                        partition,
                        rows,
                        done: None,
                        frame: seq,
                    });
                }
                (Some(seq), Job::Outcome { partition, row, .. }) => frame.push(Job::Outcome {
                    partition,
                    row,
                    frame: seq,
                }),
                (_, job @ (Job::Records { .. } | Job::Outcome { .. })) => {
                    waiting_rows |= job.waited_on();
                    frame.push(job);
                }
                (_, job) => {
                    wake |= job.waited_on();
                    after.push(job);
                }
            }
        }
        wake |= waiting_rows;
        // Clients whose rows are in the journal do not wait for room in the
        // writer's queue: answered now if the sends below may wait for it.
        if shared.to_writer.capacity() < 1 + after.len() {
            for done in answer.drain(..) {
                done.send(Ok(()));
            }
        }
        // A barrier or stop gathered with the frame goes after it: what was queued
        // before it is then in the writer's hands first.
        let sent = (frame.is_empty() || shared.to_writer.blocking_send(Job::Frame(frame)).is_ok())
            && after
                .into_iter()
                .all(|job| shared.to_writer.blocking_send(job).is_ok());
        // Relay threads append again once the front's own append has worked (one of
        // theirs failing stopped them); never after a stop.
        if stop || self.append_failing {
            shared.taking = false;
        } else if journaled.is_some() {
            shared.taking = appender.relay_threads;
        }
        drop(guard);
        for done in answer {
            done.send(Ok(()));
        }
        if wake {
            self.signals.writer.wake();
        }
        if waiting_rows && sent {
            // Their clients hear from the writer; the next batch waits for it.
            return self.wait_for_writer().is_some();
        }
        sent
    }

    /// Starts a new journal segment (a failure logged once until one works).
    fn rotate(&mut self, journal: &mut Journal) {
        match journal.rotate() {
            Ok(()) => {
                if std::mem::take(&mut self.rotate_failing) {
                    tracing::info!("journal segments rotate again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.rotate_failing, true) {
                    let e = io(&self.appender.journal_dir, e);
                    self.metrics.store_errors.inc();
                    tracing::warn!(reason = e.reason(), error = %e, "journal segment not rotated; tried again with the next frames");
                }
            }
        }
    }

    /// Appends the rows of the jobs that `take` picks as one frame: its number, or
    /// `None` when the journal could not take it (the rows then wait for the
    /// partitions).
    fn append(
        &mut self,
        journal: &mut Journal,
        jobs: &[Job],
        take: impl Fn(&Job) -> bool,
    ) -> Option<u64> {
        let entries = jobs.iter().filter(|j| take(j)).filter_map(|job| match job {
            Job::Records {
                partition, rows, ..
            } => Some(EntryRef::Records(*partition, rows)),
            Job::Outcome { partition, row, .. } => Some(EntryRef::Outcome(*partition, row)),
            _ => None,
        });
        let started = Instant::now();
        match journal.append(entries) {
            Ok(seq) => {
                let records = jobs.iter().filter(|j| take(j)).map(Job::record_rows).sum();
                self.appender.appended(started, records);
                if std::mem::take(&mut self.append_failing) {
                    tracing::info!("journal appends work again");
                }
                Some(seq)
            }
            Err(e) => {
                let e = io(&self.appender.journal_dir, e);
                self.metrics.store_errors.inc();
                if !std::mem::replace(&mut self.append_failing, true) {
                    tracing::error!(reason = e.reason(), error = %e, "journal append failed; until one works, rows are committed to the partitions before their clients are answered");
                }
                None
            }
        }
    }

    /// Waits until the writer has committed everything passed to it: how that went,
    /// or `None` when the writer is gone.
    fn wait_for_writer(&mut self) -> Option<Result<(), super::writer::WriteError>> {
        let (done, wait) = oneshot::channel();
        if !self.appender.send(Job::Barrier(done)) {
            return None;
        }
        self.signals.writer.wake();
        wait.blocking_recv().ok()
    }
}

impl journal::Entry {
    fn partition(&self) -> PartitionId {
        match self {
            journal::Entry::Records(p, _) | journal::Entry::Outcome(p, _) => *p,
        }
    }

    /// The job of a frame read back: no one waits on it.
    fn into_job(self, frame: u64) -> Job {
        match self {
            journal::Entry::Records(partition, rows) => Job::Records {
                partition,
                rows,
                done: None,
                frame,
            },
            journal::Entry::Outcome(partition, row) => Job::Outcome {
                partition,
                row,
                frame,
            },
        }
    }
}

/// What reading the journal back at start found.
struct Replay {
    frames: usize,
    last: u64,
    /// Entries dropped: their partitions were removed by expiry.
    dropped: usize,
}
