//! SMTP as relaylog reads it from clients and upstreams (`relaylog::smtp`):
//!
//! - command lines: the verb, `MAIL FROM:`/`RCPT TO:` paths and their mailboxes
//!   (what is recorded: never a control character, never longer than an address
//!   may be), ESMTP parameters, `BDAT` arguments;
//! - the same bytes as a stream, through the bounded line reader (commands) or the
//!   reply reader (an upstream's replies, their enhanced codes and queue ids),
//!   delivered a few bytes at a time: the buffer stays bounded whatever arrives.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use relaylog::smtp::{self, Line, MAX_COMMAND_LINE, MAX_REPLY_LINE, READ_CHUNK, Verb, Wire};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    for line in data.split(|&b| b == b'\n') {
        command(line.strip_suffix(b"\r").unwrap_or(line));
    }
    let step = usize::from(selector >> 1) + 1;
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut wire = Wire::new(Trickle { data, step });
            if selector & 1 == 0 {
                commands(&mut wire).await
            } else {
                replies(&mut wire).await
            }
        })
    });
});

fn command(line: &[u8]) {
    let (verb, args) = smtp::verb(line);
    match verb {
        Verb::Mail | Verb::Rcpt => {
            let prefix: &[u8] = if verb == Verb::Mail { b"FROM:" } else { b"TO:" };
            let Some((path, params)) = smtp::path_arg(args, prefix) else {
                return;
            };
            if let Some(mailbox) = smtp::mailbox(path) {
                assert!(
                    mailbox.len() <= smtp::MAX_MAILBOX,
                    "mailbox longer than an address"
                );
                assert!(
                    !mailbox.chars().any(char::is_control),
                    "control character in a mailbox"
                );
            }
            for name in [&b"SIZE"[..], b"BODY", b"SMTPUTF8", b"ORCPT", b"ENVID"] {
                if let Some(value) = smtp::param(params, name) {
                    assert!(!value.iter().any(u8::is_ascii_whitespace));
                }
            }
        }
        Verb::Bdat => {
            let _ = smtp::bdat_args(args);
        }
        _ => {}
    }
}

/// Buffered bytes the reader may hold: what is left of one read, the next, and a line.
const BOUND: usize = 2 * READ_CHUNK + MAX_COMMAND_LINE + MAX_REPLY_LINE;

async fn commands(wire: &mut Wire<Trickle<'_>>) {
    loop {
        match wire.line(MAX_COMMAND_LINE, Duration::from_secs(60)).await {
            Ok(Line::Text { len }) => {
                assert!(len < MAX_COMMAND_LINE, "a line past the limit was taken");
                command(&wire.buffered()[..len]);
                wire.consume_line(len);
            }
            Ok(Line::TooLong) => {}
            Err(_) => return,
        }
        assert!(
            wire.buffered().len() <= BOUND,
            "the line reader's buffer grew past its bound"
        );
    }
}

async fn replies(wire: &mut Wire<Trickle<'_>>) {
    while let Ok(reply) = wire.reply(Duration::from_secs(60)).await {
        assert!((200..600).contains(&reply.code));
        assert!(reply.raw.ends_with(b"\r\n"));
        if let Some(enhanced) = reply.enhanced() {
            assert!(
                enhanced.len() <= 9 && enhanced.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            );
        }
        if let Some(id) = reply.queue_id() {
            assert!(
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
            );
        }
        assert!(
            wire.buffered().len() <= BOUND,
            "the reply reader's buffer grew past its bound"
        );
    }
}

/// The input, `step` bytes a read; writes go nowhere.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
