//! A transaction's content: its records committed before the first byte goes
//! upstream, DATA streamed through the [`DotScanner`], BDAT chunks passed as they
//! come, and the outcome spent exactly once on every way out.

use std::time::{Duration, Instant};

use super::*;

pub(super) fn reply_outcome(code: u16) -> Outcome {
    match code {
        200..=399 => Outcome::Accepted,
        500..=599 => Outcome::Rejected,
        _ => Outcome::Failed,
    }
}

/// Whether a transaction's records went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    Committed,
    /// They could not be: the client has its refusal (`451 4.3.0`, and the upstream an
    /// RSET).
    Refused,
}

impl Session<'_> {
    /// Commits the open transaction's records before its content goes upstream.
    pub(super) async fn record(&mut self) -> Result<Recorded, Stop> {
        let Some(tx) = &self.tx else {
            // (The callers have checked: a transaction is open.)
            self.refuse(503, NEED_RCPT, "bad_sequence");
            return Ok(Recorded::Refused);
        };
        let started = Instant::now();
        let relay = &self.listener.relay;
        let submission = relay.submission(Found {
            account: self.account.as_deref().unwrap_or(""),
            originator: Some(&tx.sender),
            recipients: &tx.recipients,
            segments: tx.recipients.len().min(u16::MAX as usize) as u16,
            peer: self.peer,
        });
        match relay.record(&submission, started).await {
            Ok(ticket) => {
                if let Some(why) = ticket.not_now(false) {
                    ticket.not_forwarded(why, 421).await;
                    self.tx = None;
                    return Err(Stop::Close(Reply::local(421, SHUTTING_DOWN), None));
                }
                if let Some(tx) = &mut self.tx {
                    tx.ticket = Some(ticket);
                    tx.forward_started = Some(Instant::now());
                }
                Ok(Recorded::Committed)
            }
            Err(e) => {
                relay.log(Exit::FailClosed(&e), 451, started);
                self.tx = None;
                self.say(&Reply::local(
                    451,
                    "4.3.0 relaylog: cannot record the message now, try again later",
                ));
                // The upstream's transaction ends unused.
                self.reset_upstream().await?;
                Ok(Recorded::Refused)
            }
        }
    }

    /// Spends the transaction's ticket with the upstream's reply to its content.
    pub(super) async fn finish(&mut self, reply: &Reply) {
        let Some(tx) = self.tx.take() else { return };
        let Some(ticket) = tx.ticket else { return };
        let forward = tx.forward_started.map(|s| s.elapsed()).unwrap_or_default();
        let answer = Answer {
            upstream_status: Some(reply.code),
            gateway_code: None,
            message_id: if reply.code == 250 {
                reply.queue_id()
            } else {
                None
            },
            enhanced_status: reply.enhanced(),
            size_bytes: Some(tx.size),
        };
        ticket
            .outcome(Ok((reply_outcome(reply.code), answer)), forward, reply.code)
            .await;
    }

    /// The content was not delivered: the upstream leg is dropped without its end,
    /// so the upstream discards what it had; the ticket says why.
    pub(super) async fn abandon(&mut self, why: Abandon) -> Stop {
        let ticket = self.tx.take().and_then(|t| t.ticket);
        // Logged once: as the message's outcome when its content had begun, else
        // under the reason here.
        let reason = |r: &'static str| if ticket.is_some() { None } else { Some(r) };
        let cut = match why {
            Abandon::ClientGone => None,
            Abandon::ClientTimeout => Some("data_timeout"),
            Abandon::TooBig => Some("message_too_big"),
            Abandon::BareLineEnding => Some("bare_line_ending"),
        };
        if let (Some(cut), Some(_)) = (cut, &ticket) {
            // Counted here when the ticket, not the session's end, logs it.
            let relay = &self.listener.relay;
            relay.metrics.cut(&relay.name, cut);
        }
        let (status, stop) = match why {
            Abandon::ClientGone => (0, Stop::ClientGone),
            Abandon::ClientTimeout => (
                421,
                Stop::Close(Reply::local(421, TIMED_OUT), reason("data_timeout")),
            ),
            Abandon::TooBig => (
                552,
                Stop::Close(Reply::local(552, TOO_BIG), reason("message_too_big")),
            ),
            Abandon::BareLineEnding => (
                521,
                Stop::Close(
                    Reply::local(521, "5.5.2 relaylog: bare <CR> or <LF> in message content"),
                    reason("bare_line_ending"),
                ),
            ),
        };
        if let Some(ticket) = ticket {
            match why {
                Abandon::ClientGone | Abandon::ClientTimeout => {
                    ticket.not_forwarded(NotForwarded::ClientGone, status).await;
                }
                Abandon::TooBig | Abandon::BareLineEnding => {
                    let answer = Answer::default();
                    ticket
                        .outcome(Ok((Outcome::Rejected, answer)), Duration::ZERO, status)
                        .await;
                }
            }
        }
        self.drop_upstream();
        stop
    }

    pub(super) async fn data(&mut self, args: &[u8]) -> Result<(), Stop> {
        if !args.is_empty() {
            self.refuse(501, "5.5.4 Syntax: DATA", "bad_command");
            return Ok(());
        }
        match &self.tx {
            None => {
                self.refuse(503, NEED_RCPT, "bad_sequence");
                return Ok(());
            }
            Some(tx) if tx.recipients.is_empty() => {
                self.refuse(554, NO_RECIPIENTS, "no_recipients");
                return Ok(());
            }
            Some(tx) if tx.ticket.is_some() => {
                self.refuse(503, "5.5.1 Error: DATA after BDAT", "bad_sequence");
                return Ok(());
            }
            Some(_) => {}
        }
        if self.record().await? == Recorded::Refused {
            return Ok(());
        }
        let go = self.pass(b"DATA").await?;
        if go.code != 354 {
            self.finish(&go).await;
            self.say(&go);
            return Ok(());
        }
        self.say(&go);
        self.flush().await?;
        let mut scanner = DotScanner::default();
        let timeout = self.listener.settings.data_timeout;
        let limit = self.listener.settings.max_message_bytes;
        loop {
            if self.client.buffered().is_empty() {
                self.fill_data(timeout).await?;
            }
            let chunk = self.client.buffered();
            let (n, end) = match scanner.scan(chunk) {
                Scan::More(n) => (n, false),
                Scan::End(n) => (n, true),
                Scan::Bare(_) => return Err(self.abandon(Abandon::BareLineEnding).await),
            };
            let content = if end { n.saturating_sub(3) } else { n } as u64;
            if self.tx.as_ref().map_or(0, |t| t.size) + content > limit {
                return Err(self.abandon(Abandon::TooBig).await);
            }
            self.send_content(n).await?;
            if let Some(tx) = &mut self.tx {
                tx.size += content;
            }
            if end {
                break;
            }
            if n == 0 {
                // A lone CR waits for what follows it.
                self.fill_data(timeout).await?;
            }
        }
        let timeout = self.listener.upstream.timeout;
        let reply = match self.up.reply(timeout).await {
            Ok(r) => r,
            Err(e) => return Err(self.upstream_lost(e.into()).await),
        };
        self.finish(&reply).await;
        self.say(&reply);
        Ok(())
    }

    /// Reads more content from the client, within the data timeout.
    /// (`max-session` bounds it too.)
    pub(super) async fn fill_data(&mut self, timeout: Duration) -> Result<(), Stop> {
        match self.client.fill_within(self.within(timeout)).await {
            Ok(_) => Ok(()),
            Err(WireError::Timeout) => Err(self.abandon(Abandon::ClientTimeout).await),
            Err(_) => Err(self.abandon(Abandon::ClientGone).await),
        }
    }

    /// Sends the first `n` buffered client bytes upstream and consumes them.
    pub(super) async fn send_content(&mut self, n: usize) -> Result<(), Stop> {
        if n == 0 {
            return Ok(());
        }
        let timeout = self.listener.upstream.timeout;
        let sent = self.up.send(&self.client.buffered()[..n], timeout).await;
        self.client.consume(n);
        match sent {
            Ok(()) => Ok(()),
            Err(e) => Err(self.upstream_lost(e.into()).await),
        }
    }

    pub(super) async fn bdat(&mut self, line: &[u8], args: &[u8]) -> Result<(), Stop> {
        let refused_here = |s: &Self| s.tx.as_ref().is_none_or(|t| t.ticket.is_none());
        let Some((size, last)) = smtp::bdat_args(args) else {
            // Without a size the chunk cannot be skipped: the session cannot go on.
            let logged = (refused_here(self)).then_some("bad_command");
            self.finish_refused(501).await;
            return Err(Stop::Close(
                Reply::local(501, "5.5.4 Syntax: BDAT count [LAST]"),
                logged,
            ));
        };
        if size > self.listener.settings.max_message_bytes {
            // Not worth reading through: the session ends here.
            let logged = (refused_here(self)).then_some("message_too_big");
            self.finish_refused(552).await;
            return Err(Stop::Close(Reply::local(552, TOO_BIG), logged));
        }
        if !self.upstream_chunking {
            // An upstream that did not offer CHUNKING would read the chunk as
            // commands: a message inside it would go through unrecorded.
            self.skip_chunk(size).await?;
            self.refuse(502, "5.5.1 Error: BDAT without CHUNKING", "bad_sequence");
            return Ok(());
        }
        let refusal = match &self.tx {
            None => Some((503, NEED_RCPT, "bad_sequence")),
            Some(tx) if tx.recipients.is_empty() => Some((554, NO_RECIPIENTS, "no_recipients")),
            Some(tx) if tx.size.saturating_add(size) > self.listener.settings.max_message_bytes => {
                Some((552, TOO_BIG, "message_too_big"))
            }
            Some(_) => None,
        };
        if let Some((code, text, reason)) = refusal {
            self.skip_chunk(size).await?;
            let reply = Reply::local(code, text);
            if self.tx.as_ref().is_some_and(|t| t.ticket.is_some()) {
                // The chunks before went upstream: the message's outcome says it was
                // refused (and is its one log line), and the upstream's transaction ends.
                self.finish_refused(reply.code).await;
                self.reset_upstream().await?;
                self.say(&reply);
            } else {
                self.refuse(code, text, reason);
            }
            return Ok(());
        }
        if self.tx.as_ref().is_some_and(|t| t.ticket.is_none())
            && self.record().await? == Recorded::Refused
        {
            self.skip_chunk(size).await?;
            return Ok(());
        }
        self.upstream_in_step().await?;
        let timeout = self.listener.upstream.timeout;
        let mut cmd = Vec::with_capacity(line.len() + 2);
        cmd.extend_from_slice(line);
        cmd.extend_from_slice(b"\r\n");
        if let Err(e) = self.up.send(&cmd, timeout).await {
            return Err(self.upstream_lost(e.into()).await);
        }
        let mut left = size;
        while left > 0 {
            if self.client.buffered().is_empty() {
                self.fill_data(self.listener.settings.data_timeout).await?;
            }
            let n = (self.client.buffered().len() as u64).min(left) as usize;
            self.send_content(n).await?;
            left -= n as u64;
        }
        if let Some(tx) = &mut self.tx {
            tx.size += size;
        }
        let reply = match self.up.reply(timeout).await {
            Ok(r) => r,
            Err(e) => return Err(self.upstream_lost(e.into()).await),
        };
        if last || reply.code != 250 {
            // The last chunk's reply, or a refused chunk: the transaction is over
            // (RFC 3030: a failed BDAT fails the transaction).
            self.finish(&reply).await;
        }
        self.say(&reply);
        Ok(())
    }

    /// A transaction whose content began is refused by relaylog itself.
    pub(super) async fn finish_refused(&mut self, code: u16) {
        let Some(tx) = self.tx.take() else { return };
        if let Some(ticket) = tx.ticket {
            let forward = tx.forward_started.map(|s| s.elapsed()).unwrap_or_default();
            let answer = Answer {
                size_bytes: Some(tx.size),
                ..Answer::default()
            };
            ticket
                .outcome(Ok((Outcome::Rejected, answer)), forward, code)
                .await;
        }
    }

    /// Reads and drops a chunk that is not passed on.
    pub(super) async fn skip_chunk(&mut self, mut left: u64) -> Result<(), Stop> {
        while left > 0 {
            if self.client.buffered().is_empty() {
                self.fill_data(self.listener.settings.data_timeout).await?;
            }
            let n = (self.client.buffered().len() as u64).min(left) as usize;
            self.client.consume(n);
            left -= n as u64;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Abandon {
    ClientGone,
    ClientTimeout,
    TooBig,
    BareLineEnding,
}
