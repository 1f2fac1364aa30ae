//! Which message a delivery receipt is about. A receipt names its message only by the
//! SMSC's message id, which relaylog learns from the submit response; the book keeps,
//! per listener, the id (with its account) of each accepted message that asked for a
//! receipt, against its submission, for `receipt-wait`, within `receipt-book` units
//! (a message is one unit, plus one per recipient when it has several; the oldest go
//! first).
//!
//! Keys are a keyed 64-bit hash of (account, message id): the book holds no message
//! id, account or number in the clear; a message takes about 64 bytes, and 8 more per
//! recipient when it has several. A receipt from another account never finds a
//! message (its account is in the key), and a receipt for a message of several
//! recipients is attached only to the one it comes from.
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

/// How often the book drops what is too old (whichever session asks first).
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// The submission a receipt is attached to, and the recipient it is about (`None`:
/// the submission's only one).
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
    /// Keys of `sent` in the order they came, with their seq, units and time.
    order: VecDeque<(u64, u64, usize, Instant)>,
    /// Units of the entries in `order`.
    units: usize,
    early: HashMap<u64, Early>,
    next_seq: u64,
    last_expired: Instant,
}

pub struct ReceiptBook {
    book: Mutex<Book>,
    hasher: RandomState,
    wait: Duration,
    cap: usize,
    early_wait: Duration,
}

/// What became of a receipt.
pub enum Match {
    /// Its message (and recipient) is known.
    Attached(Attached, Receipt),
    /// Kept until its message id is learnt (or `upstream-timeout` passes); `replaced`:
    /// an earlier receipt for the same id was waiting, and is given up.
    Waiting { replaced: bool },
    /// No message known by its id, or not from one of its recipients.
    Unknown,
}

impl ReceiptBook {
    pub fn new(wait: Duration, cap: usize, early_wait: Duration) -> Self {
        ReceiptBook {
            book: Mutex::new(Book {
                sent: HashMap::new(),
                order: VecDeque::new(),
                units: 0,
                early: HashMap::new(),
                next_seq: 0,
                last_expired: Instant::now(),
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
    /// receipts that were waiting for it, attached (or `None` for one that is not
    /// from any of its recipients).
    pub fn sent(
        &self,
        account: &str,
        message_id: &str,
        submission: SubmissionId,
        submitted_at: Micros,
        recipients: Box<[u64]>,
    ) -> Option<(Option<Attached>, Receipt)> {
        let key = self.key(account, message_id);
        let now = Instant::now();
        let mut book = self.lock();
        let seq = book.next_seq;
        book.next_seq += 1;
        let early = book.early.remove(&key);
        let units = 1 + recipients.len();
        let entry = Sent {
            submission,
            submitted_at,
            recipients,
            seq,
        };
        let attached = early.map(|e| (attach(&entry, e.sender), e.receipt));
        book.sent.insert(key, entry);
        book.order.push_back((key, seq, units, now));
        book.units += units;
        self.evict(&mut book, now);
        attached
    }

    /// The message a receipt from `account` is about. `sender` is the receipt's
    /// source address (the handset), to tell which recipient of several it is.
    pub fn receipt(
        &self,
        account: &str,
        message_id: &str,
        receipt: Receipt,
        sender: Option<&Identifier>,
    ) -> Match {
        let key = self.key(account, message_id);
        let sender = sender.map(|s| self.recipient_key(s));
        let mut book = self.lock();
        if let Some(entry) = book.sent.get(&key) {
            return match attach(entry, sender) {
                Some(to) => Match::Attached(to, receipt),
                None => Match::Unknown,
            };
        }
        if book.early.len() >= MAX_EARLY && !book.early.contains_key(&key) {
            return Match::Unknown;
        }
        let early = Early {
            receipt,
            sender,
            at: Instant::now(),
        };
        let replaced = book.early.insert(key, early).is_some();
        Match::Waiting { replaced }
    }

    /// Drops what is too old, at most once every `EXPIRE_EVERY` whoever asks;
    /// returns how many waiting receipts gave up (unmatched).
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut book = self.lock();
        if now.duration_since(book.last_expired) < EXPIRE_EVERY {
            return 0;
        }
        book.last_expired = now;
        self.evict(&mut book, now);
        let before = book.early.len();
        let wait = self.early_wait;
        book.early.retain(|_, e| now.duration_since(e.at) < wait);
        before - book.early.len()
    }

    fn evict(&self, book: &mut Book, now: Instant) {
        while let Some(&(key, seq, units, at)) = book.order.front() {
            if book.units <= self.cap && now.duration_since(at) < self.wait {
                break;
            }
            book.order.pop_front();
            book.units -= units;
            if book.sent.get(&key).is_some_and(|s| s.seq == seq) {
                book.sent.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().sent.len()
    }
}

/// Which recipient of `entry` a receipt from `sender` is about: `None` when the
/// message has several and the sender is none of them (it cannot be told apart).
fn attach(entry: &Sent, sender: Option<u64>) -> Option<Attached> {
    let ordinal = match (&*entry.recipients, sender) {
        ([], _) => None,
        (keys, Some(sender)) => Some(keys.iter().position(|k| *k == sender)? as u32),
        (_, None) => return None,
    };
    Some(Attached {
        submission: entry.submission,
        submitted_at: entry.submitted_at,
        ordinal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Form;

    fn receipt() -> Receipt {
        Receipt {
            state: Some("DELIVRD".into()),
            error: Some("000".into()),
            done: None,
        }
    }

    fn number(n: &str) -> Identifier {
        Identifier {
            form: Form::E164,
            value: n.into(),
        }
    }

    fn book(wait: Duration, cap: usize, early_wait: Duration) -> ReceiptBook {
        ReceiptBook::new(wait, cap, early_wait)
    }

    /// Lets the next `expire` run at once.
    fn age(book: &ReceiptBook) {
        book.lock().last_expired = Instant::now() - EXPIRE_EVERY;
    }

    #[test]
    fn a_receipt_finds_its_message_and_only_under_its_account() {
        let book = book(Duration::from_secs(60), 1000, Duration::from_secs(1));
        assert!(
            book.sent("acme", "m1", SubmissionId(7), 70, Box::new([]))
                .is_none()
        );
        match book.receipt("acme", "m1", receipt(), None) {
            Match::Attached(a, got) => {
                assert_eq!(
                    (a.submission, a.submitted_at, a.ordinal),
                    (SubmissionId(7), 70, None)
                );
                assert_eq!(got, receipt());
            }
            _ => panic!("not attached"),
        }
        assert!(matches!(
            book.receipt("other", "m1", receipt(), None),
            Match::Waiting { replaced: false }
        ));
    }

    #[test]
    fn a_receipt_before_its_response_waits_for_it_then_gives_up() {
        let book = book(Duration::from_secs(60), 1000, Duration::from_millis(20));
        assert!(matches!(
            book.receipt("acme", "early", receipt(), None),
            Match::Waiting { replaced: false }
        ));
        let (to, r) = book
            .sent("acme", "early", SubmissionId(1), 10, Box::new([]))
            .expect("the waiting receipt");
        assert_eq!(
            (to.map(|a| a.submission), r),
            (Some(SubmissionId(1)), receipt())
        );
        // One that never finds its message is counted once, when it gives up; a second
        // for the same id replaces it (and says so).
        assert!(matches!(
            book.receipt("acme", "never", receipt(), None),
            Match::Waiting { replaced: false }
        ));
        assert!(matches!(
            book.receipt("acme", "never", receipt(), None),
            Match::Waiting { replaced: true }
        ));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(book.expire(), 0, "not yet a second since the last");
        age(&book);
        assert_eq!(book.expire(), 1);
        age(&book);
        assert_eq!(book.expire(), 0);
    }

    #[test]
    fn the_sender_tells_which_recipient_of_several() {
        let book = book(Duration::from_secs(60), 1000, Duration::from_secs(1));
        let a = number("+31611111111");
        let b = number("+31622222222");
        let keys = [book.recipient_key(&a), book.recipient_key(&b)];
        book.sent("acme", "multi", SubmissionId(3), 30, Box::new(keys));
        let ordinal =
            |sender: Option<&Identifier>| match book.receipt("acme", "multi", receipt(), sender) {
                Match::Attached(a, _) => Some(a.ordinal),
                Match::Unknown => None,
                Match::Waiting { .. } => panic!("its id is known"),
            };
        assert_eq!(ordinal(Some(&b)), Some(Some(1)));
        assert_eq!(ordinal(Some(&a)), Some(Some(0)));
        // From none of them, or from no one: not attached to all of them.
        assert_eq!(ordinal(Some(&number("+31633333333"))), None);
        assert_eq!(ordinal(None), None);
    }

    #[test]
    fn the_book_is_bounded_by_units_and_age() {
        // Bounded by units: a wait no test run can outlast, so only the cap evicts.
        let book = book(Duration::from_secs(3600), 1000, Duration::from_secs(1));
        for i in 0..1500 {
            book.sent("acme", &i.to_string(), SubmissionId(i), 0, Box::new([]));
        }
        assert_eq!(book.len(), 1000, "the oldest 500 went");
        assert!(matches!(
            book.receipt("acme", "0", receipt(), None),
            Match::Waiting { .. }
        ));
        assert!(matches!(
            book.receipt("acme", "1499", receipt(), None),
            Match::Attached(..)
        ));
        // A message of several recipients takes a unit for each.
        book.sent("acme", "wide", SubmissionId(9), 0, vec![1u64; 499].into());
        assert_eq!(book.len(), 501);
        // Bounded by age: whatever is past receipt-wait goes at the next expiry.
        let aging = ReceiptBook::new(Duration::from_millis(20), 1000, Duration::from_secs(1));
        aging.sent("acme", "old", SubmissionId(1), 0, Box::new([]));
        aging.sent("acme", "wide", SubmissionId(9), 0, vec![1u64; 499].into());
        assert_eq!(aging.len(), 2);
        std::thread::sleep(Duration::from_millis(30));
        age(&aging);
        aging.expire();
        assert_eq!(aging.len(), 0, "all past receipt-wait");
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
        match book.receipt("acme", "again", receipt(), None) {
            Match::Attached(a, _) => assert_eq!(a.submission, SubmissionId(2)),
            _ => panic!("the newer entry was evicted with the older"),
        }
    }
}
