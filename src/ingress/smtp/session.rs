//! One SMTP session: a client leg and an upstream leg in step. Each command is passed
//! on as parsed and the upstream's reply comes back unchanged, in order; relaylog
//! answers itself only for what it must refuse or cannot proxy, and edits only the
//! EHLO offer. The MAIL and RCPT commands of a client's pipelined batch go upstream
//! in one write when the upstream offers PIPELINING (RFC 2920), and their replies,
//! with relaylog's own refusals in their places, come back in order before anything
//! else is done: every other command waits until the upstream has answered all that
//! came before it.
//!
//! A transaction is MAIL, the RCPTs the upstream accepted, then DATA or BDAT. At
//! DATA, or at the first BDAT, the transaction's records are committed through the
//! relay core **before** a byte of content goes upstream; if they cannot be, the
//! client gets `451 4.3.0` and the upstream an RSET. Content streams through in the
//! chunks it arrives in and is never kept; at its end the upstream's final reply is
//! the outcome (code, enhanced code, queue id, size).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::egress::smtp::{Leg, SmtpUpstreamError};
use crate::record::Outcome;
use crate::relay::{Answer, Exit, Found, NotForwarded, Ticket};
use crate::shutdown::Shutdown;
use crate::smtp::{self, DotScanner, Io, Line, Reply, Scan, Verb, Wire, WireError};

use super::SmtpListener;

mod auth;
mod content;
mod envelope;

use envelope::{MAX_BATCH_BYTES, MAX_PIPELINE, Pending};

use super::offer::{self, AuthWatch, Offer};

/// Why a session ends.
#[derive(Debug)]
enum Stop {
    Quit,
    ClientGone,
    /// relaylog's own last words (a `421`, `552`, `521`), then close; with the reason
    /// to log and count it under as a refusal, or `None` when it was logged already
    /// (as a message's outcome or an upstream failure) or refuses nothing (an idle
    /// session closed at shutdown).
    Close(Reply, Option<&'static str>),
}

// The texts of replies relaylog gives in more than one place.
const TOO_BIG: &str = "5.3.4 Message size exceeds fixed limit";
const TIMED_OUT: &str = "4.4.2 relaylog: timeout exceeded, closing";
const UNAVAILABLE: &str = "4.4.2 relaylog: mail service unavailable, try again later";
const SHUTTING_DOWN: &str = "4.3.2 relaylog: service shutting down, try again later";
const NEED_RCPT: &str = "5.5.1 Error: need RCPT command";
const NO_RECIPIENTS: &str = "5.5.1 Error: no valid recipients";

/// An open transaction: MAIL was accepted.
struct Tx {
    sender: String,
    /// The recipients the upstream accepted, as sent, each once.
    recipients: Vec<String>,
    /// The same, to find one given twice.
    seen: std::collections::HashSet<String>,
    /// Set once the records are committed (at DATA or the first BDAT).
    ticket: Option<Ticket>,
    /// Content bytes sent upstream so far.
    size: u64,
    /// When the content began to go upstream.
    forward_started: Option<Instant>,
}

/// One session's state. What holds between commands:
///
/// - `tx` is `Some` only after the upstream answered 250 to MAIL, and content is
///   passed on only while it is; `tx.recipients` are the recipients the upstream
///   accepted. (A MAIL still in the batch is not in `tx` yet.)
/// - `tx.ticket` is `Some` once the transaction's records are committed (at DATA or
///   the first BDAT), and is spent exactly once on every way out ([`Ticket::outcome`]
///   or [`Ticket::not_forwarded`]): `finish`, `finish_refused`, `abandon`,
///   `reset_tx`, `upstream_lost`, the `not_now` branch of `record`, and `end` as the
///   backstop. `tx` is never dropped with a live ticket.
/// - `up` is in step with the client: every command passed has had its reply read,
///   but for the MAIL and RCPT commands in `pending`, which leave only in `settle` and
///   are answered before any other command is looked at, before the client is waited
///   on for a line, and before relaylog's last words. After `drop_upstream` the
///   caller returns a [`Stop`].
/// - `out` is flushed before waiting for a command line, an AUTH response or DATA
///   content (and when it passes [`MAX_HELD_REPLIES`]).
struct Session<'l> {
    listener: &'l SmtpListener,
    /// The client, as recorded (and told to the upstream with XCLIENT).
    peer: SocketAddr,
    client: Wire<Box<dyn Io>>,
    up: Leg,
    /// Replies not yet written to the client: written when no further command is
    /// waiting in the buffer (a pipelined batch gets its replies in one write).
    out: Vec<u8>,
    /// The client leg is TLS (implicit, or after STARTTLS): AUTH is offered under
    /// `require-tls`, and STARTTLS no longer.
    tls: bool,
    /// The upstream answered 235 to an AUTH: no second one.
    authenticated: bool,
    /// The upstream's last EHLO offered CHUNKING: BDAT may be passed to it.
    upstream_chunking: bool,
    /// The upstream's last EHLO offered PIPELINING: MAIL and RCPT may go in batches.
    upstream_pipelining: bool,
    /// MAIL and RCPT commands written for the upstream, not yet sent.
    batch: Vec<u8>,
    /// What the client is owed for them, in order (at most [`MAX_PIPELINE`]).
    pending: VecDeque<Pending>,
    /// STARTTLS happened and no EHLO or HELO since (RFC 3207: the client starts over).
    needs_ehlo: bool,
    /// The identity that authenticated, when it could be read.
    account: Option<String>,
    /// When the client connected: the log line of a session-level failure counts
    /// from here.
    started: Instant,
    /// `max-session` from the start: every wait on the client ends by then.
    deadline: Instant,
    /// Refusals of relaylog's own so far (see [`MAX_ERRORS`]).
    errors: u32,
    tx: Option<Tx>,
}

/// Refusals of relaylog's own a session may have before it is closed with `421 4.7.0`
/// (Postfix's `smtpd_hard_error_limit`).
pub const MAX_ERRORS: u32 = 20;

/// Replies held for a pipelined batch are written when they reach this size, even if
/// more commands are waiting.
const MAX_HELD_REPLIES: usize = 64 * 1024;

/// Serves one client until QUIT, its departure, a limit, or shutdown. `tls`: the
/// client connected over TLS (an implicit-TLS listener).
pub async fn serve(
    listener: &SmtpListener,
    client: Box<dyn Io>,
    peer: SocketAddr,
    tls: bool,
    shutdown: Shutdown,
) {
    let started = Instant::now();
    let mut client = Wire::new(client);
    let (up, greeting) = match listener.upstream.connect(peer).await {
        Ok(c) => c,
        Err(e) => {
            listener
                .relay
                .log(Exit::Passthrough(Some(&e)), 421, started);
            let bye = Reply::local(421, UNAVAILABLE);
            let _ = client
                .send(&bye.raw, listener.settings.command_timeout)
                .await;
            linger(&mut client).await;
            return;
        }
    };
    if greeting.code != 220 {
        // The upstream will not serve (554) or is busy (421): the client hears it, and
        // nothing is passed to an upstream leg that never got to STARTTLS or XCLIENT.
        listener
            .relay
            .log(Exit::Passthrough(None), greeting.code, started);
        let _ = client
            .send(&greeting.raw, listener.settings.command_timeout)
            .await;
        linger(&mut client).await;
        return;
    }
    let mut s = Session {
        listener,
        peer,
        client,
        up,
        out: greeting.raw,
        tls,
        authenticated: false,
        upstream_chunking: false,
        upstream_pipelining: false,
        batch: Vec::new(),
        pending: VecDeque::new(),
        needs_ehlo: false,
        account: None,
        started,
        deadline: started + listener.settings.max_session,
        errors: 0,
        tx: None,
    };
    let stop = s.run(shutdown).await;
    s.end(stop).await;
}

impl Session<'_> {
    async fn run(&mut self, mut shutdown: Shutdown) -> Stop {
        loop {
            if (!self.client.has_line()
                || self.pending.len() >= MAX_PIPELINE
                || self.batch.len() >= MAX_BATCH_BYTES)
                && let Err(stop) = self.settle().await
            {
                return stop;
            }
            if (!self.client.has_line() || self.out.len() >= MAX_HELD_REPLIES)
                && let Err(stop) = self.flush().await
            {
                return stop;
            }
            if self.errors >= MAX_ERRORS {
                return Stop::Close(
                    Reply::local(421, "4.7.0 relaylog: too many errors, closing"),
                    Some("too_many_errors"),
                );
            }
            let now = Instant::now();
            let Some(left) = self
                .deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
            else {
                return self.session_expired();
            };
            let wait = self.listener.settings.command_timeout.min(left);
            let line = tokio::select! {
                biased;
                line = self.client.line(smtp::MAX_COMMAND_LINE, wait) => line,
                _ = shutdown.wait() => {
                    // Not a refusal of anything: an idle session told why it ends.
                    return Stop::Close(Reply::local(421, SHUTTING_DOWN), None);
                }
            };
            let len = match line {
                Ok(Line::Text { len, .. }) => len,
                Ok(Line::TooLong) => {
                    self.refuse(500, "5.5.2 Error: line too long", "line_too_long");
                    continue;
                }
                Err(e) => return self.line_failed(e),
            };
            let line = self.client.buffered()[..len].to_vec();
            self.client.consume_line(len);
            // A CR or NUL inside a command reads differently to different servers.
            if line.iter().any(|&b| b == b'\r' || b == 0) {
                self.refuse(500, "5.5.2 Error: bad characters in command", "bad_command");
                continue;
            }
            if let Err(stop) = self.command(&line).await {
                return stop;
            }
        }
    }

    /// Why waiting for a client line (a command, an AUTH response) ended the session.
    fn line_failed(&self, e: WireError) -> Stop {
        match e {
            WireError::Timeout if Instant::now() >= self.deadline => self.session_expired(),
            WireError::Timeout => {
                Stop::Close(Reply::local(421, TIMED_OUT), Some("command_timeout"))
            }
            _ => Stop::ClientGone,
        }
    }

    /// `max-session` has passed.
    fn session_expired(&self) -> Stop {
        Stop::Close(
            Reply::local(421, "4.4.2 relaylog: session too long, closing"),
            Some("session_too_long"),
        )
    }

    /// `timeout`, or less if the session's `max-session` ends sooner.
    fn within(&self, timeout: Duration) -> Duration {
        timeout.min(self.deadline.saturating_duration_since(Instant::now()))
    }

    async fn command(&mut self, line: &[u8]) -> Result<(), Stop> {
        let (verb, args) = smtp::verb(line);
        if !matches!(verb, Verb::Mail | Verb::Rcpt) {
            self.settle().await?;
        }
        match verb {
            Verb::Ehlo => {
                let reply = self.pass(line).await?;
                // A refused EHLO leaves nothing offered.
                self.upstream_chunking = offer::offers(&reply, b"CHUNKING");
                self.upstream_pipelining = offer::offers(&reply, b"PIPELINING");
                if reply.code == 250 {
                    self.reset_tx().await;
                    self.needs_ehlo = false;
                }
                let offer = Offer {
                    starttls: self.listener.starttls.is_some() && !self.tls,
                    auth: self.tls || !self.listener.settings.require_tls,
                    max_message_bytes: self.listener.settings.max_message_bytes,
                };
                self.say(&offer::edit_ehlo(&reply, offer));
            }
            Verb::Helo | Verb::Rset => {
                let reply = self.pass(line).await?;
                if reply.code == 250 {
                    self.reset_tx().await;
                    if verb == Verb::Helo {
                        self.needs_ehlo = false;
                        self.upstream_chunking = false;
                        self.upstream_pipelining = false;
                    }
                }
                self.say(&reply);
            }
            Verb::Noop | Verb::Vrfy | Verb::Help => {
                let reply = self.pass(line).await?;
                self.say(&reply);
            }
            Verb::Quit => {
                let reply = self.pass(line).await?;
                self.say(&reply);
                let _ = self.flush().await;
                return Err(Stop::Quit);
            }
            Verb::StartTls => return self.starttls(args).await,
            Verb::Auth => return self.auth(line, args).await,
            Verb::Mail => return self.mail(args).await,
            Verb::Rcpt => return self.rcpt(args).await,
            Verb::Data => return self.data(args).await,
            Verb::Bdat => return self.bdat(line, args).await,
            Verb::Other => {
                // XCLIENT and XFORWARD among them: only relaylog says who the client is.
                self.refuse(
                    502,
                    "5.5.2 Error: command not recognized",
                    "unknown_command",
                );
            }
        }
        Ok(())
    }

    /// Sends a command upstream as parsed (re-terminated with CRLF) and reads its reply.
    async fn pass(&mut self, line: &[u8]) -> Result<Reply, Stop> {
        let mut cmd = Vec::with_capacity(line.len() + 2);
        cmd.extend_from_slice(line);
        cmd.extend_from_slice(b"\r\n");
        self.exchange(&cmd).await
    }

    async fn exchange(&mut self, bytes: &[u8]) -> Result<Reply, Stop> {
        self.upstream_in_step().await?;
        let timeout = self.listener.upstream.timeout;
        let sent = self.up.send(bytes, timeout).await;
        let reply = match sent {
            Ok(()) => self.up.reply(timeout).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(r) => Ok(r),
            Err(e) => Err(self.upstream_lost(e.into()).await),
        }
    }

    /// Before a command goes upstream: nothing may be waiting from the upstream that
    /// no command asked for (it would be read as the next command's reply).
    async fn upstream_in_step(&mut self) -> Result<(), Stop> {
        if self.up.buffered().is_empty() {
            return Ok(());
        }
        let e = WireError::Malformed("a reply no command asked for");
        Err(self.upstream_lost(e.into()).await)
    }

    /// The upstream leg broke: the client hears `421 4.4.2`; a message on its way gets
    /// its outcome first (`failed`: it may or may not have reached the upstream).
    async fn upstream_lost(&mut self, e: SmtpUpstreamError) -> Stop {
        // What a batch was owed is not coming: the client hears the 421 next.
        self.pending.clear();
        self.batch.clear();
        // Counted and logged once: as the message's outcome when one was on its way,
        // else as an upstream failure of the session.
        match self
            .tx
            .take()
            .and_then(|tx| Some((tx.ticket?, tx.forward_started)))
        {
            Some((ticket, started)) => {
                let forward = started.map(|s| s.elapsed()).unwrap_or_default();
                ticket.outcome(Err(&e), forward, 421).await;
            }
            None => self
                .listener
                .relay
                .log(Exit::Passthrough(Some(&e)), 421, self.started),
        }
        self.drop_upstream();
        Stop::Close(Reply::local(421, UNAVAILABLE), None)
    }

    /// Owes the client `reply`: after the replies of a batch still with the upstream.
    fn say(&mut self, reply: &Reply) {
        if self.pending.is_empty() {
            self.out.extend_from_slice(&reply.raw);
        } else {
            self.pending.push_back(Pending::Local(reply.clone()));
        }
    }

    /// A refusal of relaylog's own: counted and logged as rejected, nothing forwarded.
    fn refuse(&mut self, code: u16, text: &str, reason: &'static str) {
        self.errors += 1;
        self.say(&Reply::local(code, text));
        self.listener
            .relay
            .log(Exit::Rejected(reason), code, Instant::now());
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let wait = self.within(self.listener.settings.command_timeout);
        let sent = self.client.send(&self.out, wait).await;
        self.out.clear();
        sent.map_err(|_| Stop::ClientGone)
    }

    /// Closes the upstream leg at once, mid-content: no end of data ever reaches it.
    fn drop_upstream(&mut self) {
        drop(std::mem::replace(
            &mut self.up,
            Wire::new(Box::new(smtp::Closed)),
        ));
    }

    /// Ends the session: relaylog's last reply if it has one, QUIT upstream when the
    /// leg is still in step, and any message still on its way gets its outcome.
    async fn end(mut self, mut stop: Stop) {
        if matches!(stop, Stop::Close(..))
            && let Err(lost) = self.settle().await
        {
            // Replies owed for a batch go before relaylog's last words; an upstream
            // that cannot give them is what the client hears about instead.
            stop = lost;
        }
        if let Some(tx) = self.tx.take()
            && let Some(ticket) = tx.ticket
        {
            // The content had begun and did not end (the paths above spend tickets;
            // this is the backstop): not delivered, and the upstream leg, mid-content,
            // must not get a QUIT it would read as content.
            ticket.not_forwarded(NotForwarded::ClientGone, 0).await;
            self.drop_upstream();
        }
        match stop {
            Stop::Quit => {}
            Stop::ClientGone => {
                let _ = self.up.send(b"QUIT\r\n", Duration::from_secs(1)).await;
            }
            Stop::Close(reply, reason) => {
                if let Some(reason) = reason {
                    let relay = &self.listener.relay;
                    relay.log(Exit::Rejected(reason), reply.code, Instant::now());
                    relay.metrics.cut(&relay.name, reason);
                }
                self.say(&reply);
                // A second to say it, even when max-session is what ended the session.
                let _ = self.client.send(&self.out, Duration::from_secs(1)).await;
                let _ = self.up.send(b"QUIT\r\n", Duration::from_secs(1)).await;
                linger(&mut self.client).await;
            }
        }
    }

    /// The transaction ends (RSET, HELO, EHLO): a message whose content had begun
    /// (BDAT chunks went upstream) was abandoned by its client; its ticket says so.
    async fn reset_tx(&mut self) {
        if let Some(tx) = self.tx.take()
            && let Some(ticket) = tx.ticket
        {
            ticket.not_forwarded(NotForwarded::ClientGone, 0).await;
        }
    }

    /// Ends the upstream's transaction with RSET; anything but 250 means the leg is
    /// out of step with relaylog and cannot be used.
    async fn reset_upstream(&mut self) -> Result<(), Stop> {
        let reply = self.pass(b"RSET").await?;
        if reply.code == 250 {
            return Ok(());
        }
        Err(self
            .upstream_lost(SmtpUpstreamError::Reset(reply.code))
            .await)
    }
}

/// After relaylog's last reply, closes its side and reads what the client still
/// sends, briefly: closing with unread input would reset the connection, and the
/// client could lose the reply that says why.
async fn linger(client: &mut Wire<Box<dyn Io>>) {
    use tokio::io::AsyncWriteExt;
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: usize = 1 << 20;
    let _ = tokio::time::timeout(LINGER, client.io.shutdown()).await;
    client.discard_buffered();
    let mut read = 0;
    let until = Instant::now() + LINGER;
    while read < LINGER_BYTES {
        match client
            .fill_within(until.saturating_duration_since(Instant::now()))
            .await
        {
            Ok(n) => {
                read += n;
                client.discard_buffered();
            }
            Err(_) => break,
        }
    }
}
