//! The envelope: MAIL and RCPT, passed one by one or, when the upstream offers
//! PIPELINING, in batches (RFC 2920) whose replies `settle` reads back in order,
//! with relaylog's own refusals in their places.

use std::time::Instant;

use super::*;

/// A reply the client is owed, in order, while MAIL and RCPT commands of a pipelined
/// batch are with the upstream.
pub(super) enum Pending {
    /// The upstream's reply to MAIL; 250 opens the transaction.
    Mail { sender: String },
    /// The upstream's reply to RCPT; 250 or 251 adds the recipient.
    Rcpt { recipient: String },
    /// A refusal of relaylog's own, between them.
    Local(Reply),
}

/// Commands a batch may have with the upstream before their replies are read.
pub(super) const MAX_PIPELINE: usize = 100;

/// Bytes of commands a batch may have with the upstream before their replies are
/// read: well within a socket buffer, so that neither side blocks writing while the
/// other does too (RFC 2920 §3.1).
pub(super) const MAX_BATCH_BYTES: usize = 16 * 1024;

/// An upstream that says yes (250, 251, or any 2xx a lenient server gives) has the
/// command: a recipient it took is recorded.
fn is_2xx(code: u16) -> bool {
    (200..300).contains(&code)
}

impl Session<'_> {
    /// Passes a MAIL or RCPT on: into the batch when the upstream takes pipelined
    /// commands (answered by `settle`), else at once, its reply owed in order.
    pub(super) async fn pass_or_batch(&mut self, line: &[u8], owed: Pending) -> Result<(), Stop> {
        if self.upstream_pipelining {
            self.batch.extend_from_slice(line);
            self.batch.extend_from_slice(b"\r\n");
            self.pending.push_back(owed);
            return Ok(());
        }
        let reply = self.pass(line).await?;
        self.apply(owed, reply);
        Ok(())
    }

    /// Sends the batch and reads the upstream's replies to it, in order, with
    /// relaylog's own refusals in their places.
    pub(super) async fn settle(&mut self) -> Result<(), Stop> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // One upstream-timeout for the whole batch, not one per reply.
        let until = Instant::now() + self.listener.upstream.timeout;
        let left = || until.saturating_duration_since(Instant::now());
        self.upstream_in_step().await?;
        let sent = self.up.send(&self.batch, left()).await;
        self.batch.clear();
        if let Err(e) = sent {
            return Err(self.upstream_lost(e.into()).await);
        }
        while let Some(owed) = self.pending.pop_front() {
            let reply = match owed {
                Pending::Local(r) => {
                    self.out.extend_from_slice(&r.raw);
                    continue;
                }
                _ => match self.up.reply(left()).await {
                    Ok(r) => r,
                    Err(e) => return Err(self.upstream_lost(e.into()).await),
                },
            };
            self.apply(owed, reply);
            if self.out.len() >= MAX_HELD_REPLIES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// The upstream's reply to a MAIL or RCPT: its effect on the transaction, and the
    /// client's copy (written in order: nothing is pending before it).
    pub(super) fn apply(&mut self, owed: Pending, reply: Reply) {
        match owed {
            // (A second 250 to MAIL, which no conforming upstream gives, opens nothing.)
            Pending::Mail { sender } if is_2xx(reply.code) && self.tx.is_none() => {
                self.tx = Some(Tx {
                    sender,
                    recipients: Vec::new(),
                    seen: Default::default(),
                    ticket: None,
                    size: 0,
                    forward_started: None,
                });
            }
            Pending::Rcpt { recipient } if is_2xx(reply.code) => {
                // A recipient given twice is one recipient (the upstream delivers once).
                // (Compared in the form the index uses: `"jan"@x` is `jan@x`.)
                let key = crate::canonical::email_index_form(&recipient).into_owned();
                if let Some(tx) = &mut self.tx
                    && tx.seen.insert(key)
                {
                    tx.recipients.push(recipient);
                }
            }
            _ => {}
        }
        self.out.extend_from_slice(&reply.raw);
    }

    /// Recipients the upstream accepted in the open transaction.
    pub(super) fn accepted(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.recipients.len())
    }

    /// RCPT commands with the upstream, unanswered.
    pub(super) fn batched_rcpts(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| matches!(p, Pending::Rcpt { .. }))
            .count()
    }

    /// A MAIL is with the upstream, unanswered: a transaction may be open.
    pub(super) fn mail_pending(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Mail { .. }))
    }

    pub(super) async fn mail(&mut self, args: &[u8]) -> Result<(), Stop> {
        if self.not_ready() {
            return Ok(());
        }
        if self.tx.is_some() || self.mail_pending() {
            self.refuse(503, "5.5.1 Error: nested MAIL command", "bad_sequence");
            return Ok(());
        }
        let Some((path, params)) = smtp::path_arg(args, b"FROM:") else {
            self.refuse(501, "5.5.4 Syntax: MAIL FROM:<address>", "bad_command");
            return Ok(());
        };
        let Some(sender) = smtp::mailbox(path) else {
            self.refuse(501, "5.1.7 Bad sender address syntax", "bad_address");
            return Ok(());
        };
        let declared = smtp::param(params, b"SIZE")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u64>().ok());
        if declared.is_some_and(|s| s > self.listener.settings.max_message_bytes) {
            self.refuse(552, TOO_BIG, "message_too_big");
            return Ok(());
        }
        let line = envelope_line("MAIL FROM:", sender, params, self.authenticated);
        let sender = sender.to_owned();
        self.pass_or_batch(&line, Pending::Mail { sender }).await
    }

    pub(super) async fn rcpt(&mut self, args: &[u8]) -> Result<(), Stop> {
        // At the recipient limit, counting those still with the upstream: their
        // replies first, so that the limit counts only what was accepted.
        if self.accepted() + self.batched_rcpts() >= self.listener.settings.max_recipients {
            self.settle().await?;
        }
        // With a MAIL still unanswered in the batch, the upstream decides the sequence.
        if self.tx.is_none() && !self.mail_pending() {
            self.refuse(503, "5.5.1 Error: need MAIL command", "bad_sequence");
            return Ok(());
        }
        if self.tx.as_ref().is_some_and(|tx| tx.ticket.is_some()) {
            self.refuse(
                503,
                "5.5.1 Error: RCPT after the content began",
                "bad_sequence",
            );
            return Ok(());
        }
        let Some((path, params)) = smtp::path_arg(args, b"TO:") else {
            self.refuse(501, "5.5.4 Syntax: RCPT TO:<address>", "bad_command");
            return Ok(());
        };
        let Some(recipient) = smtp::mailbox(path).filter(|m| !m.is_empty()) else {
            self.refuse(501, "5.1.3 Bad recipient address syntax", "bad_address");
            return Ok(());
        };
        let recipient = recipient.to_owned();
        // Recipients in the batch count as if accepted: the limit never goes over.
        if self.accepted() + self.batched_rcpts() >= self.listener.settings.max_recipients {
            self.refuse(
                452,
                "4.5.3 Error: too many recipients",
                "too_many_recipients",
            );
            return Ok(());
        }
        let line = envelope_line("RCPT TO:", &recipient, params, self.authenticated);
        self.pass_or_batch(&line, Pending::Rcpt { recipient }).await
    }
}

/// MAIL or RCPT as it goes upstream: rebuilt from what relaylog read and recorded, in
/// RFC 5321's plain form (`MAIL FROM:<mailbox> params`), so that the upstream acts on
/// the very mailbox in the record (a source route dropped, parameters one space
/// apart). RFC 4954's `AUTH=` names who submitted the message; from a client that did
/// not authenticate it becomes `AUTH=<>` (nobody), as §5 has servers treat it.
fn envelope_line(command: &str, mailbox: &str, params: &[u8], authenticated: bool) -> Vec<u8> {
    let mut line = format!("{command}<{mailbox}>").into_bytes();
    for p in params
        .split(u8::is_ascii_whitespace)
        .filter(|p| !p.is_empty())
    {
        line.push(b' ');
        let auth = p.len() >= 5 && p[..5].eq_ignore_ascii_case(b"AUTH=");
        line.extend_from_slice(if auth && !authenticated {
            b"AUTH=<>"
        } else {
            p
        });
    }
    line
}

#[cfg(test)]
mod tests {
    use super::envelope_line;

    #[test]
    fn envelope_lines_carry_what_was_recorded() {
        assert_eq!(
            envelope_line(
                "MAIL FROM:",
                "a@example.org",
                b"SIZE=10  BODY=8BITMIME",
                false
            ),
            b"MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME"
        );
        assert_eq!(
            envelope_line(
                "MAIL FROM:",
                "a@example.org",
                b"AUTH=<ceo@example.org>",
                false
            ),
            b"MAIL FROM:<a@example.org> AUTH=<>"
        );
        assert_eq!(
            envelope_line("MAIL FROM:", "a@example.org", b"auth=<a@example.org>", true),
            b"MAIL FROM:<a@example.org> auth=<a@example.org>"
        );
        assert_eq!(envelope_line("MAIL FROM:", "", b"", false), b"MAIL FROM:<>");
        assert_eq!(
            envelope_line(
                "RCPT TO:",
                "jan@example.nl",
                b"NOTIFY=NEVER\tORCPT=rfc822;jan@example.nl",
                false
            ),
            b"RCPT TO:<jan@example.nl> NOTIFY=NEVER ORCPT=rfc822;jan@example.nl"
        );
    }
}
