//! Which message a delivery receipt is about. A receipt names its message only by the
//! SMSC's message id, which relaylog learns from the submit response; the book keeps,
//! per listener, each accepted message's id (with its account) against its submission,
//! for `receipt-wait` and at most `receipt-book` entries (the oldest go first).
//!
//! Keys are a keyed 64-bit hash of (account, message id): the book holds no message
//! id, account or number in the clear, and 24 bytes of value per message. A receipt
//! from another account never finds a message (its account is in the key).
//!
//! A receipt may overtake the submit response that carries its id (an SMSC answers
//! on one path and delivers on another): it waits, at most `upstream-timeout` and
//! [`MAX_EARLY`] of them, for its id to be learnt.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::canonical::Identifier;
use crate::clock::Micros;
use crate::record::{Receipt, SubmissionId};

/// Receipts kept waiting for their message id at once, per listener.
pub const MAX_EARLY: usize = 10_000;

/// A submission a receipt is attached to, and the recipient it is about (`None`: the
/// whole submission, which has one recipient, or the receipt's sender is not one of
/// its recipients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub submission: SubmissionId,
    pub submitted_at: Micros,
    pub ordinal: Option<u32>,
}

/// A message whose receipt may come.
struct Sent {
    submission: SubmissionId,
    submitted_at: Micros,
    /// The recipients' keys, in ordinal order, when there is more than one.
    recipients: Box<[u64]>,
    /// Its place in `order`, to tell a live entry from one replaced since.
    seq: u64,
}

/// A receipt that came before its message id was known.
struct Early {
    receipt: Receipt,
    sender: Option<u64>,
    at: Instant,
}

struct Book {
    sent: HashMap<u64, Sent>,
    /// Keys of `sent` in the order they came, with their seq and time.
    order: VecDeque<(u64, u64, Instant)>,
    early: HashMap<u64, Early>,
    next_seq: u64,
}

pub struct ReceiptBook {
    book: Mutex<Book>,
    hasher: RandomState,
    wait: Duration,
    cap: usize,
    early_wait: Duration,
}

/// What became of a receipt.
pub enum Found {
    /// Its message is known.
    Attached(Attached, Receipt),
    /// Kept until its message id is learnt (or `upstream-timeout` passes).
    Waiting,
    /// No message known by its id.
    Unknown,
}

impl ReceiptBook {
    pub fn new(wait: Duration, cap: usize, early_wait: Duration) -> Self {
        ReceiptBook {
            book: Mutex::new(Book {
                sent: HashMap::new(),
                order: VecDeque::new(),
                early: HashMap::new(),
                next_seq: 0,
            }),
            hasher: RandomState::new(),
            wait,
            cap,
            early_wait,
        }
    }

    fn key(&self, account: &str, message_id: &str) -> u64 {
        self.hasher.hash_one((b'm', account, message_id))
    }

    /// The key of a recipient, for telling which of several a receipt is about.
    pub fn recipient_key(&self, id: &Identifier) -> u64 {
        self.hasher.hash_one((b'r', id.index_value().as_ref()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An accepted message's id, learnt from its submit response. Returns the
    /// receipts that were waiting for it, attached.
    pub fn sent(
        &self,
        account: &str,
        message_id: &str,
        submission: SubmissionId,
        submitted_at: Micros,
        recipients: Box<[u64]>,
    ) -> Vec<(Attached, Receipt)> {
        let key = self.key(account, message_id);
        let now = Instant::now();
        let mut book = self.lock();
        let seq = book.next_seq;
        book.next_seq += 1;
        let early = book.early.remove(&key);
        let entry = Sent {
            submission,
            submitted_at,
            recipients,
            seq,
        };
        let attached = early.map(|e| (attach(&entry, e.sender), e.receipt));
        book.sent.insert(key, entry);
        book.order.push_back((key, seq, now));
        self.evict(&mut book, now);
        attached.into_iter().collect()
    }

    /// The message a receipt from `account` is about. `sender` is the receipt's
    /// source address (the handset), to tell which recipient of several it is.
    pub fn receipt(
        &self,
        account: &str,
        message_id: &str,
        receipt: Receipt,
        sender: Option<&Identifier>,
    ) -> Found {
        let key = self.key(account, message_id);
        let sender = sender.map(|s| self.recipient_key(s));
        let mut book = self.lock();
        if let Some(entry) = book.sent.get(&key) {
            return Found::Attached(attach(entry, sender), receipt);
        }
        if book.early.len() >= MAX_EARLY {
            return Found::Unknown;
        }
        book.early.insert(
            key,
            Early {
                receipt,
                sender,
                at: Instant::now(),
            },
        );
        Found::Waiting
    }

    /// Drops what is too old; returns how many waiting receipts gave up (unmatched).
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut book = self.lock();
        self.evict(&mut book, now);
        let before = book.early.len();
        let wait = self.early_wait;
        book.early.retain(|_, e| now.duration_since(e.at) < wait);
        before - book.early.len()
    }

    fn evict(&self, book: &mut Book, now: Instant) {
        while let Some(&(key, seq, at)) = book.order.front() {
            if book.order.len() <= self.cap && now.duration_since(at) < self.wait {
                break;
            }
            book.order.pop_front();
            if book.sent.get(&key).is_some_and(|s| s.seq == seq) {
                book.sent.remove(&key);
            }
        }
    }

    /// Messages whose receipts can still be attached.
    pub fn len(&self) -> usize {
        self.lock().sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn attach(entry: &Sent, sender: Option<u64>) -> Attached {
    let ordinal = match (&*entry.recipients, sender) {
        ([], _) => None,
        (keys, Some(sender)) => keys.iter().position(|k| *k == sender).map(|i| i as u32),
        (_, None) => None,
    };
    Attached {
        submission: entry.submission,
        submitted_at: entry.submitted_at,
        ordinal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Form;

    fn receipt(id: &str) -> (String, Receipt) {
        let r = Receipt {
            state: Some("DELIVRD".into()),
            error: Some("000".into()),
            done: None,
        };
        (id.to_owned(), r)
    }

    fn number(n: &str) -> Identifier {
        Identifier {
            form: Form::E164,
            value: n.into(),
        }
    }

    #[test]
    fn a_receipt_finds_its_message_and_only_under_its_account() {
        let book = ReceiptBook::new(Duration::from_secs(60), 1000, Duration::from_secs(1));
        assert!(
            book.sent("acme", "m1", SubmissionId(7), 70, Box::new([]))
                .is_empty()
        );
        let (id, r) = receipt("m1");
        match book.receipt("acme", &id, r.clone(), None) {
            Found::Attached(a, got) => {
                assert_eq!(
                    (a.submission, a.submitted_at, a.ordinal),
                    (SubmissionId(7), 70, None)
                );
                assert_eq!(got, r);
            }
            _ => panic!("not attached"),
        }
        assert!(matches!(
            book.receipt("other", &id, r, None),
            Found::Waiting
        ));
    }

    #[test]
    fn a_receipt_before_its_response_waits_for_it_then_gives_up() {
        let book = ReceiptBook::new(Duration::from_secs(60), 1000, Duration::from_millis(20));
        let (id, r) = receipt("early");
        assert!(matches!(
            book.receipt("acme", &id, r.clone(), None),
            Found::Waiting
        ));
        let got = book.sent("acme", "early", SubmissionId(1), 10, Box::new([]));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.submission, &got[0].1), (SubmissionId(1), &r));
        // One that never finds its message is counted once, when it gives up.
        assert!(matches!(
            book.receipt("acme", "never", r, None),
            Found::Waiting
        ));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(book.expire(), 1);
        assert_eq!(book.expire(), 0);
    }

    #[test]
    fn the_sender_tells_which_recipient_of_several() {
        let book = ReceiptBook::new(Duration::from_secs(60), 1000, Duration::from_secs(1));
        let a = number("+31611111111");
        let b = number("+31622222222");
        let keys = [book.recipient_key(&a), book.recipient_key(&b)];
        book.sent("acme", "multi", SubmissionId(3), 30, Box::new(keys));
        let (id, r) = receipt("multi");
        let ordinal =
            |sender: Option<&Identifier>| match book.receipt("acme", &id, r.clone(), sender) {
                Found::Attached(a, _) => a.ordinal,
                _ => panic!("not attached"),
            };
        assert_eq!(ordinal(Some(&b)), Some(1));
        assert_eq!(ordinal(Some(&a)), Some(0));
        assert_eq!(ordinal(Some(&number("+31633333333"))), None);
        assert_eq!(ordinal(None), None);
    }

    #[test]
    fn the_book_is_bounded_by_count_and_age() {
        let book = ReceiptBook::new(Duration::from_millis(20), 1000, Duration::from_secs(1));
        for i in 0..1500 {
            book.sent("acme", &i.to_string(), SubmissionId(i), 0, Box::new([]));
        }
        assert_eq!(book.len(), 1000, "the oldest 500 went");
        let (_, r) = receipt("x");
        assert!(matches!(
            book.receipt("acme", "0", r.clone(), None),
            Found::Waiting
        ));
        assert!(matches!(
            book.receipt("acme", "1499", r, None),
            Found::Attached(..)
        ));
        std::thread::sleep(Duration::from_millis(30));
        book.expire();
        assert!(book.is_empty(), "all past receipt-wait");
        // The same id sent again replaces the entry; the old one's eviction leaves it.
        let book = ReceiptBook::new(Duration::from_secs(60), 1000, Duration::from_secs(1));
        book.sent("acme", "again", SubmissionId(1), 0, Box::new([]));
        for i in 0..999 {
            book.sent(
                "acme",
                &i.to_string(),
                SubmissionId(100 + i),
                0,
                Box::new([]),
            );
        }
        book.sent("acme", "again", SubmissionId(2), 0, Box::new([]));
        assert_eq!(book.len(), 1000);
        let (_, r) = receipt("again");
        match book.receipt("acme", "again", r, None) {
            Found::Attached(a, _) => assert_eq!(a.submission, SubmissionId(2)),
            _ => panic!("the newer entry was evicted with the older"),
        }
    }
}
