//! One shutdown signal for the whole process, in the style of mini-redis: every loop
//! selects on [`Shutdown::wait`]; [`Drain`] tokens held by connections tell the server
//! when the last one has finished.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// The same news as a flag: [`Shutdown::is_triggered`] is one atomic load, for
    /// checks on the hot path (a watch read takes its lock).
    flag: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
    flag: Arc<AtomicBool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let flag = Arc::new(AtomicBool::new(false));
    (
        Trigger {
            tx,
            flag: flag.clone(),
        },
        Shutdown { rx, flag },
    )
}

impl Trigger {
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// Whether shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once shutdown is triggered (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means: stop.
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

/// Held by every connection task; [`DrainWaiter::wait`] returns when all are dropped.
#[derive(Debug, Clone)]
pub struct Drain {
    _tx: mpsc::Sender<()>,
}

#[derive(Debug)]
pub struct DrainWaiter {
    rx: mpsc::Receiver<()>,
}

pub fn drain() -> (Drain, DrainWaiter) {
    let (tx, rx) = mpsc::channel(1);
    (Drain { _tx: tx }, DrainWaiter { rx })
}

impl DrainWaiter {
    pub async fn wait(mut self) {
        let _ = self.rx.recv().await;
    }
}
