//! Refused logins and unauthenticated API calls, coalesced: one audit entry per peer,
//! kind and minute, with counts, so that a flood cannot grow the hash-chained log
//! without bound; and the per-peer limit that turns a flood away before it costs a
//! password hash.
//!
//! A refusal is counted in the ledger's `refusal` table (outside the chain), in the row
//! of its kind, peer and minute. The row becomes one audit entry once its minute is
//! over, at the next write to the ledger or `serve`'s minute timer. When the log is
//! listed (`audit list`, the API's audit list) within the minute, what the row holds
//! so far is written then, so that a reader sees every refusal; the row keeps its
//! count (the limit goes on), and the rest of the minute is one more entry.
//!
//! Peers are the client's address for the API (IPv6 by its /64, which one host may
//! hold whole) and `local:USER` for the command line (the user the process runs as,
//! not `$USER`). Past [`MAX_PEERS`] in a minute, further peers share one row and one
//! limit, so that the log grows by at most about `2 × (MAX_PEERS + 1)` entries a
//! minute whatever a flood does.

use crate::ledger::db::{Db, DbResult};

use crate::clock::Micros;
use crate::ledger::{Ledger, LedgerError, sql_err};

/// A login refused: wrong or unknown credentials, TOTP, disabled or locked officer, or
/// the peer over its limit. (A role too low for the action is not coalesced: the
/// officer did log in, and it is audited at once.)
pub const LOGIN: &str = "auth.failure";
/// An API call without a live session.
pub const UNAUTHENTICATED: &str = "api.unauthenticated";

/// Refused logins a peer may have in a minute; past it, its logins are refused
/// unchecked (HTTP 429 on the API) until the minute is over.
pub const LOGINS_PER_MINUTE: i64 = 10;
/// Unauthenticated API calls a peer may make in a minute before it gets 429.
pub const UNAUTHENTICATED_PER_MINUTE: i64 = 60;
/// Peers counted apart per kind and minute; refusals from any more are counted under
/// [`OTHER_PEERS`] (one row for them all, held to [`OTHER_PEERS_FACTOR`] times a peer's
/// limit), so that addresses in their thousands make one row, not thousands. The
/// command line's peers (`local:`) always have rows of their own: a flood from the
/// network never turns the console away.
pub const MAX_PEERS: i64 = 256;
/// How many times one peer's limit the peers past [`MAX_PEERS`] share. A flood from
/// that many addresses can still turn other new addresses away for the rest of its
/// minute (not those already counted, nor the console): the price of a bound on the
/// log and on guessing from many addresses.
pub const OTHER_PEERS_FACTOR: i64 = 10;
/// The longest peer kept: longer ones are cut (an IPv6 /64 is at most 24 characters).
const MAX_PEER_LEN: usize = 64;
pub const OTHER_PEERS: &str = "(other peers)";
/// Distinct names kept per map of a row's summary (actors, reasons, calls); more are
/// counted under `(more)`.
const MAX_KEYS: usize = 16;

fn minute_of(at: Micros) -> i64 {
    at.div_euclid(60_000_000)
}

impl Ledger {
    /// Counts one refusal of `kind` from `peer` at `at`: `actor` is the officer's name
    /// when it exists (otherwise `(unknown)`), `call` what was tried (the action a
    /// login was for, or an API call's method and route), `reason` why it was refused.
    /// Returns the refusals of that kind the peer has had in this minute, this one
    /// included (for a peer past [`MAX_PEERS`], those of all such peers).
    pub fn count_refusal(
        &mut self,
        at: Micros,
        kind: &str,
        peer: &str,
        actor: &str,
        call: &str,
        reason: &str,
    ) -> Result<i64, LedgerError> {
        self.flush_refusals(at, false)?;
        let err = sql_err(&self.path);
        let minute = minute_of(at);
        // IMMEDIATE: the row is read and written back whole; two processes (or two
        // blocking threads) counting at once wait their turn instead of failing.
        let mut conn = self.db();
        let mut tx = conn.begin().map_err(err)?;
        let peer = row_peer(&mut tx, kind, peer, minute).map_err(err)?;
        let found = tx
            .query_opt(
                "SELECT summary FROM refusal WHERE kind = ?1 AND peer = ?2 AND minute = ?3",
                &[&kind, &peer, &minute],
            )
            .and_then(|r| r.map(|r| r.text(0)).transpose())
            .map_err(err)?;
        let mut summary: serde_json::Value = found
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        for (map, key) in [("actors", actor), ("calls", call), ("reasons", reason)] {
            bump(&mut summary[map], key);
        }
        let count = tx
            .query_one(
                "INSERT INTO refusal (kind, peer, minute, count, written, first_at, last_at, summary)
                 VALUES (?1, ?2, ?3, 1, 0, ?4, ?4, ?5)
                 ON CONFLICT (kind, peer, minute)
                 DO UPDATE SET count = refusal.count + 1, last_at = ?4, summary = ?5,
                     first_at = CASE WHEN refusal.count = refusal.written THEN ?4 ELSE refusal.first_at END
                 RETURNING count",
                &[&kind, &peer, &minute, &at, &summary.to_string()],
            )
            .and_then(|r| r.int(0))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(count)
    }

    /// Whether `peer` has had `limit` refusals of `kind` or more in the minute of `at`
    /// (a peer past [`MAX_PEERS`]: whether all such peers have had
    /// [`OTHER_PEERS_FACTOR`] times as many).
    pub fn over_limit(
        &self,
        at: Micros,
        kind: &str,
        peer: &str,
        limit: i64,
    ) -> Result<bool, LedgerError> {
        let err = sql_err(&self.path);
        let shared =
            row_peer(&mut self.db(), kind, peer, minute_of(at)).map_err(err)? == OTHER_PEERS;
        let limit = if shared {
            limit * OTHER_PEERS_FACTOR
        } else {
            limit
        };
        Ok(self.refusals(at, kind, peer)? >= limit)
    }

    /// The refusals of `kind` from `peer` in the minute of `at` so far (for a peer
    /// past [`MAX_PEERS`], those of all such peers).
    pub fn refusals(&self, at: Micros, kind: &str, peer: &str) -> Result<i64, LedgerError> {
        let err = sql_err(&self.path);
        let minute = minute_of(at);
        let mut conn = self.db();
        let peer = row_peer(&mut conn, kind, peer, minute).map_err(err)?;
        let count = conn
            .query_opt(
                "SELECT count FROM refusal WHERE kind = ?1 AND peer = ?2 AND minute = ?3",
                &[&kind, &peer, &minute],
            )
            .and_then(|r| r.map(|r| r.int(0)).transpose())
            .map_err(err)?;
        Ok(count.unwrap_or(0))
    }

    /// Writes the coalesced refusals of the minutes before `at`'s to the audit log, one
    /// entry per kind, peer and minute, and forgets them; with `listing`, also what the
    /// current minute's rows hold so far (they keep their counts, for the limits, and
    /// write only what comes after). Returns how many entries it wrote.
    pub fn flush_refusals(&mut self, at: Micros, listing: bool) -> Result<usize, LedgerError> {
        let err = sql_err(&self.path);
        let current = minute_of(at);
        let upto = if listing { current + 1 } else { current };
        // Nothing to do, nearly always: one indexed probe before a transaction.
        let mut conn = self.db();
        let any = conn
            .query_opt(
                "SELECT 1 FROM refusal WHERE minute < ?1 OR (minute < ?2 AND count > written) LIMIT 1",
                &[&current, &upto],
            )
            .map_err(err)?;
        if any.is_none() {
            return Ok(0);
        }
        let mut tx = conn.begin().map_err(err)?;
        type Row = (String, String, i64, i64, i64, i64, i64, String);
        let rows: Vec<Row> = tx
            .query(
                "SELECT kind, peer, minute, count, written, first_at, last_at, summary FROM refusal
                 WHERE minute < ?1 AND count > written ORDER BY minute, kind, peer",
                &[&upto],
            )
            .and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.text(0)?,
                            r.text(1)?,
                            r.int(2)?,
                            r.int(3)?,
                            r.int(4)?,
                            r.int(5)?,
                            r.int(6)?,
                            r.text(7)?,
                        ))
                    })
                    .collect()
            })
            .map_err(err)?;
        for (kind, peer, minute, count, written, first_at, last_at, summary) in &rows {
            let summary: serde_json::Value =
                serde_json::from_str(summary).unwrap_or_else(|_| serde_json::json!({}));
            // One officer named: that officer; several, or only unknown names: as is.
            let actor = match summary["actors"].as_object() {
                Some(actors) if actors.len() == 1 => actors.keys().next().cloned(),
                _ => None,
            }
            .unwrap_or_else(|| "(several)".to_owned());
            let details = serde_json::json!({
                "peer": peer,
                "minute": crate::export::rfc3339(minute * 60_000_000),
                "count": count - written,
                "first": crate::export::rfc3339(*first_at),
                "last": crate::export::rfc3339(*last_at),
                "actors": summary["actors"],
                "calls": summary["calls"],
                "reasons": summary["reasons"],
            });
            Ledger::append(&mut tx, at, &actor, kind, &details).map_err(err)?;
        }
        tx.execute("DELETE FROM refusal WHERE minute < ?1", &[&current])
            .map_err(err)?;
        // The current minute's rows, written so far: their counts stay for the limits.
        tx.execute(
            "UPDATE refusal SET written = count, summary = '{}'
             WHERE minute = ?1 AND count > written",
            &[&current],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(rows.len())
    }
}

/// The row a refusal from `peer` is counted in: its own (cut to [`MAX_PEER_LEN`]),
/// unless it has none yet, is not the command line's, and [`MAX_PEERS`] peers have rows
/// of this kind and minute already: then [`OTHER_PEERS`].
fn row_peer(conn: &mut Db, kind: &str, peer: &str, minute: i64) -> DbResult<String> {
    let mut end = peer.len().min(MAX_PEER_LEN);
    while !peer.is_char_boundary(end) {
        end -= 1;
    }
    let peer = &peer[..end];
    let own = conn.query_opt(
        "SELECT 1 FROM refusal WHERE kind = ?1 AND peer = ?2 AND minute = ?3",
        &[&kind, &peer, &minute],
    )?;
    if own.is_some() || peer.starts_with("local:") {
        return Ok(peer.to_owned());
    }
    let peers = conn
        .query_one(
            "SELECT count(*) FROM refusal WHERE kind = ?1 AND minute = ?2 AND peer != ?3",
            &[&kind, &minute, &OTHER_PEERS],
        )?
        .int(0)?;
    Ok(if peers >= MAX_PEERS {
        OTHER_PEERS
    } else {
        peer
    }
    .to_owned())
}

/// Adds one to `map[key]`, or to `map["(more)"]` once the map holds [`MAX_KEYS`] names.
fn bump(map: &mut serde_json::Value, key: &str) {
    if !map.is_object() {
        *map = serde_json::json!({});
    }
    let obj = map.as_object_mut().expect("made an object above");
    let key = if obj.contains_key(key) || obj.len() < MAX_KEYS {
        key
    } else {
        "(more)"
    };
    let n = obj
        .get(key)
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    obj.insert(key.to_owned(), (n + 1).into());
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Micros = 60_000_000;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        (dir, l)
    }

    /// A flood of refusals from one peer in one minute is one audit entry with the
    /// count; the next minute's are another; the counts restart each minute.
    #[test]
    fn refusals_of_a_peer_in_a_minute_are_one_entry_with_a_count() {
        let (_dir, mut l) = ledger();
        let t = 1_000 * MIN;
        for i in 0..500 {
            let reason = if i % 2 == 0 { "credentials" } else { "totp" };
            let n = l
                .count_refusal(t + i, LOGIN, "192.0.2.7", "anna", "session.login", reason)
                .unwrap();
            assert_eq!(n, i + 1);
        }
        l.count_refusal(
            t + 5,
            LOGIN,
            "192.0.2.8",
            "(unknown)",
            "session.login",
            "credentials",
        )
        .unwrap();
        assert_eq!(l.refusals(t + 10, LOGIN, "192.0.2.7").unwrap(), 500);
        assert!(
            l.entries().unwrap().is_empty(),
            "nothing in the log mid-minute"
        );
        // The next minute's first refusal writes the last minute's, one entry a peer.
        l.count_refusal(t + MIN, LOGIN, "192.0.2.7", "anna", "case.list", "totp")
            .unwrap();
        assert_eq!(l.refusals(t + MIN, LOGIN, "192.0.2.7").unwrap(), 1);
        let entries = l.entries().unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        let d: serde_json::Value = serde_json::from_str(&entries[0].details).unwrap();
        assert_eq!(entries[0].actor, "anna");
        assert_eq!(entries[0].action, LOGIN);
        assert_eq!(d["peer"], "192.0.2.7");
        assert_eq!(d["count"], 500);
        assert_eq!(
            d["reasons"],
            serde_json::json!({"credentials": 250, "totp": 250})
        );
        assert_eq!(d["calls"], serde_json::json!({"session.login": 500}));
        assert_eq!(entries[1].actor, "(unknown)");
        // Listing the log writes the current minute's too, and the count goes on: the
        // rest of the minute is one more entry, with only what came after.
        assert_eq!(l.flush_refusals(t + MIN + 1, true).unwrap(), 1);
        assert_eq!(l.entries().unwrap().len(), 3);
        assert_eq!(l.flush_refusals(t + MIN + 2, true).unwrap(), 0);
        assert_eq!(l.refusals(t + MIN, LOGIN, "192.0.2.7").unwrap(), 1);
        l.count_refusal(t + MIN + 3, LOGIN, "192.0.2.7", "anna", "case.list", "totp")
            .unwrap();
        assert_eq!(l.refusals(t + MIN, LOGIN, "192.0.2.7").unwrap(), 2);
        l.flush_refusals(t + 2 * MIN, false).unwrap();
        let entries = l.entries().unwrap();
        assert_eq!(entries.len(), 4);
        let d: serde_json::Value = serde_json::from_str(&entries[3].details).unwrap();
        assert_eq!(
            (d["count"].as_i64(), d["calls"]["case.list"].as_i64()),
            (Some(1), Some(1))
        );
        l.verify_audit().unwrap();
    }

    /// Peers past [`MAX_PEERS`] in a minute share one row; names past `MAX_KEYS` in a
    /// row's maps share one key: what a refusal costs the ledger is bounded.
    #[test]
    fn thousands_of_peers_and_names_stay_bounded() {
        let (_dir, mut l) = ledger();
        let t = 7 * MIN;
        for i in 0..MAX_PEERS + 300 {
            let peer = format!("2001:db8::{i:x}");
            let name = format!("name{i}");
            l.count_refusal(
                t,
                UNAUTHENTICATED,
                &peer,
                &name,
                "GET /api/v1/cases",
                "no token",
            )
            .unwrap();
        }
        let rows = l
            .db()
            .query_one("SELECT count(*) FROM refusal", &[])
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(rows, MAX_PEERS + 1);
        assert_eq!(l.refusals(t, UNAUTHENTICATED, OTHER_PEERS).unwrap(), 300);
        // A peer past the limit is held to the shared row's count, not to its own none.
        assert_eq!(
            l.refusals(t, UNAUTHENTICATED, "2001:db8::ffff").unwrap(),
            300
        );
        assert_eq!(l.refusals(t, UNAUTHENTICATED, "2001:db8::1").unwrap(), 1);
        // The shared row is held to ten times a peer's limit; the console's peers never
        // share it.
        assert!(
            l.over_limit(t, UNAUTHENTICATED, "2001:db8::ffff", 30)
                .unwrap()
        );
        assert!(
            !l.over_limit(t, UNAUTHENTICATED, "2001:db8::ffff", 31)
                .unwrap()
        );
        assert!(!l.over_limit(t, UNAUTHENTICATED, "local:root", 1).unwrap());
        l.count_refusal(t, UNAUTHENTICATED, "local:root", "x", "y", "z")
            .unwrap();
        assert_eq!(l.refusals(t, UNAUTHENTICATED, "local:root").unwrap(), 1);
        l.flush_refusals(t, true).unwrap();
        let other = l
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.details.contains(OTHER_PEERS))
            .unwrap();
        let d: serde_json::Value = serde_json::from_str(&other.details).unwrap();
        assert_eq!(d["count"], 300);
        assert_eq!(d["actors"].as_object().unwrap().len(), MAX_KEYS + 1);
        assert_eq!(d["actors"]["(more)"], 300 - MAX_KEYS as i64);
        assert_eq!(other.actor, "(several)");
    }
}
