//! SMTP sessions through `serve` on loopback, in front of the built-in sink MTA: the
//! protocol's edge cases, what is recorded, and what is refused (smtp-proto's style:
//! send lines, assert reply codes).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use relaylog::config::Config;
use relaylog::record::Outcome;
use relaylog::serve::SimulatorStats;
use relaylog::simulator::smtp::SinkStats;
use relaylog::smtp::{Reply, Wire};
use relaylog::store::keys::IndexKind;
use relaylog::store::query::Found;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

struct Mail {
    running: relaylog::serve::Running,
    config: Config,
    addr: SocketAddr,
    admin: String,
}

impl Mail {
    async fn start(dir: &Path, listener: &str, store: &str) -> Mail {
        init_keys(dir);
        let text = smtp_config_text(dir, listener, store);
        let config = Config::parse(&text, Path::new("test.toml")).unwrap();
        let running = common::start_serve(config.clone(), Arc::new(relaylog::clock::SystemClock))
            .await
            .unwrap();
        let addr = running.addr("mail").unwrap();
        let admin = format!("http://{}", running.admin.unwrap());
        Mail {
            running,
            config,
            addr,
            admin,
        }
    }

    fn sink(&self) -> &SinkStats {
        match &self.running.simulators[0].stats {
            SimulatorStats::Smtp(s) => s,
            _ => panic!("an SMTP listener starts the sink"),
        }
    }

    fn queued(&self) -> u64 {
        self.sink().messages.load(Ordering::SeqCst)
    }

    async fn settle(&self) {
        self.running.settle().await.unwrap();
    }

    fn by_recipient(&self, address: &str) -> Vec<Found> {
        query_store(&self.config, IndexKind::Recipient, address)
    }
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

const CANARY_SUBJECT: &str = "Subject: canary-subject-7f3a";
const CANARY_BODY: &str = "canary-body-91bd";

/// A transaction with one recipient refused: the upstream's replies reach the client
/// unchanged, the accepted recipients are recorded (never the refused one, the
/// headers, the body or the EHLO name), and the outcome has the queue id.
#[tokio::test]
async fn a_message_is_relayed_and_its_envelope_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert_eq!(
        text(&greeting),
        "220 sink.relaylog.test ESMTP relaylog sink\r\n"
    );
    let ehlo = text(&c.cmd("EHLO canary-helo.example").await);
    for ext in [
        "PIPELINING",
        "SIZE 10240000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "CHUNKING",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext} in {ehlo}"
        );
    }
    assert!(
        !ehlo.contains("XCLIENT")
            && !ehlo.contains("ETRN")
            && !ehlo.contains("STARTTLS")
            && !ehlo.contains("AUTH="),
        "{ehlo}"
    );

    assert_eq!(
        text(
            &c.cmd("MAIL FROM:<Sender@Example.ORG> SIZE=100 BODY=8BITMIME")
                .await
        ),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        c.code(
            "RCPT TO:<Jan.Jansen@Example.NL> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;jan@example.nl"
        )
        .await,
        250
    );
    let refused = c.cmd("RCPT TO:<refuse-me@example.nl>").await;
    assert_eq!(
        text(&refused),
        "550 5.1.1 Recipient address rejected: User unknown in local recipient table\r\n"
    );
    assert_eq!(c.code("RCPT TO:<piet@example.nl>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    c.send(
        format!("{CANARY_SUBJECT}\r\nFrom: someone\r\n\r\n{CANARY_BODY}\r\n..dot-stuffed\r\n.\r\n")
            .as_bytes(),
    )
    .await;
    let done = c.reply().await;
    assert_eq!(done.code, 250);
    let queue_id = done.queue_id().expect("the sink says queued as");
    assert_eq!(c.code("QUIT").await, 221);
    assert_eq!(mail.queued(), 1);
    mail.settle().await;

    let found = mail.by_recipient("Jan.Jansen@example.nl");
    assert_eq!(
        found.len(),
        1,
        "the indexed form (domain lower-cased) finds it"
    );
    let f = &found[0];
    assert_eq!((f.protocol.as_str(), f.service.as_str()), ("smtp", "email"));
    assert_eq!(f.fields.account, "");
    assert_eq!(f.fields.client_port, c.port);
    assert_eq!(
        f.fields.originator.as_ref().unwrap().value,
        "Sender@Example.ORG",
        "sealed as sent"
    );
    assert_eq!(f.fields.recipient.value, "Jan.Jansen@Example.NL");
    assert_eq!(f.segments, 2, "the transaction's recipient count");
    let o = f.outcome.as_ref().expect("an outcome");
    assert_eq!(o.outcome, Outcome::Accepted);
    assert_eq!(o.upstream_status, Some(250));
    assert_eq!(o.enhanced_status.as_deref(), Some("2.0.0"));
    assert_eq!(o.upstream_message_id.as_deref(), Some(queue_id.as_str()));
    let size =
        format!("{CANARY_SUBJECT}\r\nFrom: someone\r\n\r\n{CANARY_BODY}\r\n..dot-stuffed\r\n")
            .len();
    assert_eq!(o.size_bytes, Some(size as u64));
    assert_eq!(mail.by_recipient("piet@example.nl").len(), 1);
    assert!(
        mail.by_recipient("refuse-me@example.nl").is_empty(),
        "a refused recipient is not recorded"
    );
    let by_sender = query_store(&mail.config, IndexKind::Originator, "Sender@example.org");
    assert_eq!(by_sender.len(), 2);

    let metrics = reqwest_metrics(&mail.admin).await;
    mail.running.shutdown().await;
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for canary in [CANARY_SUBJECT, CANARY_BODY, "canary-helo"] {
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "{canary} in {}",
                f.display()
            );
        }
    }
    for canary in [CANARY_SUBJECT, CANARY_BODY, "canary-helo", "Jansen"] {
        assert!(!metrics.contains(canary), "{canary} in the metrics");
    }
}

async fn reqwest_metrics(admin: &str) -> String {
    get(&client(), &format!("{admin}/metrics")).await.1
}

/// A pipelined batch (MAIL, RCPT, DATA; then the content and the next transaction)
/// split at every byte: the replies come back complete and in order.
#[tokio::test]
async fn pipelined_batches_split_at_every_byte_get_their_replies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let batch = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<refuse@example.net>\r\nDATA\r\n";
    let content = b"hello\r\n.\r\nRSET\r\nNOOP\r\n";
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    // The pause lets relaylog read the first part alone (a timed wait only to make
    // the split happen on the wire; nothing is asserted about time).
    let pause = Duration::from_millis(3);
    for split in 0..=batch.len() {
        c.send(&batch[..split]).await;
        tokio::time::sleep(pause).await;
        c.send(&batch[split..]).await;
        let codes = [
            c.reply().await.code,
            c.reply().await.code,
            c.reply().await.code,
            c.reply().await.code,
        ];
        assert_eq!(codes, [250, 250, 550, 354], "batch split at {split}");
        let at = split % content.len();
        c.send(&content[..at]).await;
        tokio::time::sleep(pause).await;
        c.send(&content[at..]).await;
        let codes = [
            c.reply().await.code,
            c.reply().await.code,
            c.reply().await.code,
        ];
        assert_eq!(codes, [250, 250, 250], "content split at {at}");
    }
    assert_eq!(c.code("QUIT").await, 221);
    assert_eq!(mail.queued(), batch.len() as u64 + 1);
    mail.settle().await;
    assert_eq!(mail.by_recipient("b@example.net").len(), batch.len() + 1);
    mail.running.shutdown().await;
}

/// BDAT in chunks of mixed sizes, `BDAT n LAST`, `BDAT 0 LAST`, and several
/// transactions in one session.
#[tokio::test]
async fn chunking_passes_binary_chunks_and_several_transactions_share_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    // Binary content with what would end DATA: BDAT does not look at it.
    let first = b"\r\n.\r\nMAIL FROM:<x@y>\r\n\0\xff";
    let mut batch = b"MAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.net>\r\n".to_vec();
    batch.extend_from_slice(format!("BDAT {}\r\n", first.len()).as_bytes());
    batch.extend_from_slice(first);
    batch.extend_from_slice(b"BDAT 3\r\nabcBDAT 5 LAST\r\n12345");
    c.send(&batch).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.reply().await);
    }
    assert_eq!(
        got.iter().map(|r| r.code).collect::<Vec<_>>(),
        [250, 250, 250, 250, 250]
    );
    let queue_id = got[4].queue_id().expect("the last chunk is queued");
    // A second transaction, empty but for BDAT 0 LAST, after RSET and NOOP.
    assert_eq!(c.code("RSET").await, 250);
    assert_eq!(c.code("NOOP").await, 250);
    assert_eq!(c.code("MAIL FROM:<>").await, 250);
    assert_eq!(c.code("RCPT TO:<e@example.net>").await, 250);
    assert_eq!(c.code("BDAT 0 LAST").await, 250);
    assert_eq!(c.code("QUIT").await, 221);
    assert_eq!(mail.queued(), 2);
    mail.settle().await;
    let f = &mail.by_recipient("d@example.net")[0];
    let o = f.outcome.as_ref().unwrap();
    assert_eq!(o.size_bytes, Some(first.len() as u64 + 8));
    assert_eq!(o.upstream_message_id.as_deref(), Some(queue_id.as_str()));
    let bounce = &mail.by_recipient("e@example.net")[0];
    assert_eq!(bounce.fields.originator, None, "the null sender");
    assert_eq!(bounce.outcome.as_ref().unwrap().size_bytes, Some(0));
    mail.running.shutdown().await;
}

/// AUTH passes through; the account is the authentication identity once the upstream
/// said 235, and the password appears nowhere: not in the store, the logs or metrics.
#[tokio::test(flavor = "current_thread")]
async fn auth_passes_through_and_the_password_is_never_kept() {
    let logs = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let b64 = |s: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let password = "canary-password-5c1e";
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    // A wrong password: the upstream refuses, no account.
    let wrong = b64(b"\0mallory\0wrong");
    assert_eq!(
        text(&c.cmd(&format!("AUTH PLAIN {wrong}")).await),
        "535 5.7.8 Error: authentication failed: authentication failure\r\n"
    );
    assert_eq!(c.code("AUTH CRAM-MD5").await, 504);
    // LOGIN, with the challenges passed on.
    assert_eq!(text(&c.cmd("AUTH LOGIN").await), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.code(&b64(b"alice@example.com")).await, 334);
    assert_eq!(c.code(&b64(password.as_bytes())).await, 235);
    assert_eq!(c.code("MAIL FROM:<alice@example.com>").await, 250);
    assert_eq!(c.code("RCPT TO:<bob@example.net>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("hi\r\n.").await.code, 250);
    assert_eq!(c.code("QUIT").await, 221);
    mail.settle().await;
    let found = query_store(&mail.config, IndexKind::Account, "alice@example.com");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].fields.recipient.value, "bob@example.net");

    // PLAIN with an initial response, in another session.
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    let plain = b64(format!("\0carol\0{password}").as_bytes());
    assert_eq!(c.code(&format!("AUTH PLAIN {plain}")).await, 235);
    assert_eq!(c.code("AUTH PLAIN").await, 503, "once per session");
    assert_eq!(c.code("MAIL FROM:<carol@example.com>").await, 250);
    assert_eq!(c.code("RCPT TO:<dave@example.net>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("hi\r\n.").await.code, 250);
    mail.settle().await;
    assert_eq!(
        query_store(&mail.config, IndexKind::Account, "carol").len(),
        1
    );
    let metrics = reqwest_metrics(&mail.admin).await;
    mail.running.shutdown().await;

    assert!(
        !logs.lines("relaylog::access").is_empty(),
        "relaylog's log was captured"
    );
    let secrets = [password.to_owned(), b64(password.as_bytes()), plain.clone()];
    for s in &secrets {
        assert!(!logs.text().contains(s.as_str()), "a secret in the log");
        assert!(!metrics.contains(s.as_str()), "a secret in the metrics");
    }
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for s in &secrets {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "a secret in {}",
                f.display()
            );
        }
    }
}

/// Limits, each with its RFC 5321 reply: line length, recipients, declared and actual
/// size. An oversized message never gets its end of data upstream.
#[tokio::test]
async fn limits_are_refused_with_their_replies_and_nothing_oversized_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(
        dir.path(),
        "max-recipients = 2\nmax-message-bytes = 1000\n",
        "",
    )
    .await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    let ehlo = text(&c.cmd("EHLO client").await);
    assert!(
        ehlo.contains("250-SIZE 1000\r\n"),
        "the listener's lower limit is offered: {ehlo}"
    );
    let long = format!("NOOP {}", "x".repeat(3000));
    assert_eq!(
        text(&c.cmd(&long).await),
        "500 5.5.2 Error: line too long\r\n"
    );
    assert_eq!(c.code("NOOP").await, 250, "the session goes on");
    assert_eq!(c.code("MAIL FROM:<a@example.org> SIZE=2000").await, 552);
    assert_eq!(c.code("MAIL FROM:<a@example.org> SIZE=900").await, 250);
    assert_eq!(c.code("RCPT TO:<one@example.net>").await, 250);
    assert_eq!(c.code("RCPT TO:<two@example.net>").await, 250);
    assert_eq!(
        text(&c.cmd("RCPT TO:<three@example.net>").await),
        "452 4.5.3 Error: too many recipients\r\n"
    );
    assert_eq!(c.code("DATA").await, 354);
    // Over the limit: refused as soon as it is over, the session closed, nothing queued.
    c.send(&vec![b'x'; 1500]).await;
    c.send(b"\r\n.\r\n").await;
    assert_eq!(
        text(&c.reply().await),
        "552 5.3.4 Message size exceeds fixed limit\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(mail.queued(), 0);
    mail.settle().await;
    let f = &mail.by_recipient("one@example.net")[0];
    assert_eq!(f.outcome.as_ref().unwrap().outcome, Outcome::Rejected);
    assert!(mail.by_recipient("three@example.net").is_empty());

    // BDAT over the limit: refused before it goes upstream; the transaction ends.
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<four@example.net>").await, 250);
    c.send(b"BDAT 600\r\n").await;
    c.send(&[b'y'; 600]).await;
    assert_eq!(c.reply().await.code, 250);
    c.send(b"BDAT 600 LAST\r\n").await;
    c.send(&[b'y'; 600]).await;
    assert_eq!(c.reply().await.code, 552);
    assert_eq!(c.code("RSET").await, 250, "the session goes on");
    assert_eq!(mail.queued(), 0);
    mail.settle().await;
    let o = mail.by_recipient("four@example.net")[0]
        .outcome
        .clone()
        .unwrap();
    assert_eq!((o.outcome, o.size_bytes), (Outcome::Rejected, Some(600)));
    mail.running.shutdown().await;
}

/// SMTP smuggling: a bare LF (or CR) inside DATA is where some receivers end a
/// message and others do not. relaylog refuses it and never sends it upstream.
#[tokio::test]
async fn bare_line_endings_in_content_are_refused_and_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    for smuggled in [
        &b"one\n.\nMAIL FROM:<s@x>\r\n"[..],
        b"one\r\n.\nRCPT",
        b"one\r.\r\nX",
    ] {
        let (mut c, _) = SmtpClient::connect(mail.addr).await;
        assert_eq!(c.code("EHLO client").await, 250);
        assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
        assert_eq!(c.code("RCPT TO:<smuggle@example.net>").await, 250);
        assert_eq!(c.code("DATA").await, 354);
        c.send(smuggled).await;
        c.send(b"\r\n.\r\n").await;
        assert_eq!(c.reply().await.code, 521);
        assert!(c.closed().await);
    }
    assert_eq!(mail.queued(), 0);
    mail.settle().await;
    let found = mail.by_recipient("smuggle@example.net");
    assert_eq!(found.len(), 3);
    assert!(
        found
            .iter()
            .all(|f| f.outcome.as_ref().unwrap().outcome == Outcome::Rejected)
    );
    mail.running.shutdown().await;
}

/// A client that leaves mid-DATA: the upstream never gets an end of data, and the
/// records say the message was not sent.
#[tokio::test]
async fn a_client_gone_mid_data_leaves_records_saying_so_and_nothing_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<gone@example.net>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    c.send(b"half a message\r\n").await;
    drop(c);
    let deadline = std::time::Instant::now() + T;
    loop {
        mail.settle().await;
        let found = mail.by_recipient("gone@example.net");
        if let Some(o) = found.first().and_then(|f| f.outcome.clone()) {
            assert_eq!(o.outcome, Outcome::FailedClientGone);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no outcome");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mail.queued(), 0);
    mail.running.shutdown().await;
}

/// Commands only relaylog may send (XCLIENT, XFORWARD) and commands it does not proxy
/// are refused, never passed on; with `xclient = true` relaylog itself tells the
/// upstream the real client.
#[tokio::test]
async fn xclient_is_relaylogs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("XCLIENT ADDR=10.0.0.1").await, 502);
    assert_eq!(c.code("XFORWARD ADDR=10.0.0.1").await, 502);
    assert_eq!(c.code("ETRN example.org").await, 502);
    assert_eq!(c.code("QUIT").await, 221);
    assert_eq!(mail.sink().xclients.load(Ordering::SeqCst), 0);
    mail.running.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "xclient = true\n", "").await;
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert_eq!(greeting.code, 220);
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(mail.sink().xclients.load(Ordering::SeqCst), 1);
    let told = mail.sink().xclient_last.lock().unwrap().clone().unwrap();
    assert_eq!(told, format!("ADDR=127.0.0.1 PORT={}", c.port));
    mail.running.shutdown().await;
}

/// The store cannot take the records: `451 4.3.0`, the upstream transaction is reset,
/// nothing is delivered.
#[tokio::test]
async fn when_records_cannot_be_committed_the_message_is_refused_and_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = "queue-capacity = 3\nenqueue-timeout = \"100ms\"\n";
    let mail = Mail::start(dir.path(), "", store).await;
    // A first message makes the day's partition.
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    for cmd in ["MAIL FROM:<a@example.org>", "RCPT TO:<first@example.net>"] {
        assert_eq!(c.code(cmd).await, 250);
    }
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("x\r\n.").await.code, 250);
    mail.settle().await;

    let lock = hold_writer(dir.path());
    if on_postgres() {
        // No journal: the next message waits for its commit and, past its time, is
        // refused, nothing delivered; once the lock is gone mail goes through again.
        for cmd in [
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<closed-out@example.net>",
        ] {
            assert_eq!(c.code(cmd).await, 250);
        }
        assert_eq!(
            text(&c.cmd("DATA").await),
            "451 4.3.0 relaylog: cannot record the message now, try again later\r\n"
        );
        assert_eq!(mail.queued(), 1);
        lock.release();
        for cmd in ["MAIL FROM:<a@example.org>", "RCPT TO:<after@example.net>"] {
            assert_eq!(c.code(cmd).await, 250);
        }
        assert_eq!(c.code("DATA").await, 354);
        assert_eq!(c.cmd("x\r\n.").await.code, 250);
        mail.settle().await;
        assert_eq!(mail.by_recipient("after@example.net").len(), 1);
        assert_eq!(mail.queued(), 2);
        mail.running.shutdown().await;
        return;
    }
    // The journal takes the next message; the writer is stuck on it.
    for cmd in [
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<journaled@example.net>",
    ] {
        assert_eq!(c.code(cmd).await, 250);
    }
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("x\r\n.").await.code, 250);
    writer_stuck(&mail.admin).await;
    // Two messages wait on the writer and fill its queue...
    let mut waiting = Vec::new();
    for n in 0..2 {
        let addr = mail.addr;
        waiting.push(tokio::spawn(async move {
            let (mut c, _) = SmtpClient::connect(addr).await;
            c.code("EHLO client").await;
            c.code("MAIL FROM:<a@example.org>").await;
            c.code(&format!("RCPT TO:<waiting{n}@example.net>")).await;
            let go = c.code("DATA").await;
            if go == 354 {
                c.cmd("x\r\n.").await.code
            } else {
                go
            }
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ...and the next is refused.
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<closed-out@example.net>").await, 250);
    assert_eq!(
        text(&c.cmd("DATA").await),
        "451 4.3.0 relaylog: cannot record the message now, try again later\r\n"
    );
    // The upstream transaction was reset: a new one starts cleanly.
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<closed-out@example.net>").await, 250);
    // At the first BDAT the same: 451, the chunk read and dropped, the session on.
    c.send(b"BDAT 5 LAST\r\nhello").await;
    assert_eq!(c.reply().await.code, 451);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RSET").await, 250);
    assert_eq!(mail.queued(), 2);
    lock.release();
    for w in waiting {
        assert_eq!(
            w.await.unwrap(),
            250,
            "the waiting messages go through once the writer resumes"
        );
    }
    mail.settle().await;
    assert!(mail.by_recipient("closed-out@example.net").is_empty());
    assert_eq!(mail.by_recipient("journaled@example.net").len(), 1);
    assert_eq!(mail.queued(), 4);
    mail.running.shutdown().await;
}

/// An upstream that is down: `421 4.4.2` at once, nothing recorded.
#[tokio::test]
async fn an_upstream_that_is_down_gets_421() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mail = Mail::start(
        dir.path(),
        &format!("upstream = \"smtp://127.0.0.1:{port}\"\n"),
        "",
    )
    .await;
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert_eq!(greeting.code, 421);
    assert!(
        text(&greeting).starts_with("421 4.4.2 "),
        "{}",
        text(&greeting)
    );
    assert!(c.closed().await);
    let metrics = reqwest_metrics(&mail.admin).await;
    assert!(metrics.contains("reason=\"connect_refused\""), "{metrics}");
    mail.running.shutdown().await;
}

/// Timeouts and the session limit: `421 4.4.2` and close; the connection limit:
/// `421 4.7.0`.
#[tokio::test]
async fn timeouts_and_connection_limits_close_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(
        dir.path(),
        "command-timeout = \"300ms\"\nmax-connections = 1\n",
        "",
    )
    .await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    let (mut other, busy) = SmtpClient::connect(mail.addr).await;
    assert_eq!(
        text(&busy),
        "421 4.7.0 relaylog: too many connections, try again later\r\n"
    );
    assert!(other.closed().await);
    let idle = c.reply().await;
    assert!(text(&idle).starts_with("421 4.4.2 "), "{}", text(&idle));
    assert!(c.closed().await);
    mail.running.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "max-session = \"500ms\"\n", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    let mut last = String::new();
    for _ in 0..50 {
        last = text(&c.cmd("NOOP").await);
        if !last.starts_with("250") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last, "421 4.4.2 relaylog: session too long, closing\r\n",
        "the session is closed at max-session"
    );
    let metrics = reqwest_metrics(&mail.admin).await;
    assert!(metrics.contains("reason=\"session_too_long\""), "{metrics}");
    mail.running.shutdown().await;
}

/// At shutdown, an idle session is told `421 4.3.2` and closed.
#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    let stop = tokio::spawn(mail.running.shutdown());
    let bye = c.reply().await;
    assert!(text(&bye).starts_with("421 4.3.2 "), "{}", text(&bye));
    stop.await.unwrap();
    let mut w = c.wire;
    let _ = w.io.shutdown().await;
}

/// STARTTLS towards the client, with `require-tls`: AUTH and MAIL wait for it
/// (`530 5.7.0`), AUTH is offered only after it, and a message then goes through.
#[tokio::test]
async fn starttls_is_offered_and_require_tls_holds_auth_and_mail_until_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, keys) = cert_files(dir.path(), "mail");
    let mail = Mail::start(dir.path(), &format!("{keys}require-tls = true\n"), "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    let ehlo = text(&c.cmd("EHLO client").await);
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        text(&c.cmd("MAIL FROM:<a@example.org>").await),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(c.code("AUTH PLAIN AGEAYg==").await, 530);
    assert_eq!(c.code("STARTTLS").await, 220);
    let Wire { io, .. } = c.wire;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = trusting(&ck).connect(name, io).await.unwrap();
    let mut c = SmtpClient {
        wire: Wire::new(Box::new(tls)),
        port: c.port,
    };
    let ehlo = text(&c.cmd("EHLO client").await);
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(c.code("STARTTLS").await, 502, "not twice");
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<tls@example.net>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("secret\r\n.").await.code, 250);
    assert_eq!(mail.queued(), 1);
    mail.settle().await;
    assert_eq!(mail.by_recipient("tls@example.net").len(), 1);
    mail.running.shutdown().await;
}

/// An implicit-TLS listener (port 465 style): TLS from the first byte, no STARTTLS.
#[tokio::test]
async fn an_implicit_tls_listener_speaks_tls_from_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, keys) = cert_files(dir.path(), "mail");
    let mail = Mail::start(
        dir.path(),
        &format!("{keys}implicit-tls = true\nrequire-tls = true\n"),
        "",
    )
    .await;
    let tcp = TcpStream::connect(mail.addr).await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = trusting(&ck).connect(name, tcp).await.unwrap();
    let mut c = SmtpClient {
        wire: Wire::new(Box::new(tls)),
        port,
    };
    assert_eq!(c.reply().await.code, 220);
    let ehlo = text(&c.cmd("EHLO client").await);
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<implicit@example.net>").await, 250);
    c.send(b"BDAT 2 LAST\r\nhi").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(mail.queued(), 1);
    mail.settle().await;
    assert_eq!(mail.by_recipient("implicit@example.net").len(), 1);
    mail.running.shutdown().await;
}

/// A sink speaking TLS with a certificate for `localhost`: its address, its counts, the
/// trigger that keeps it running, and the `upstream-ca` line that trusts it.
async fn tls_sink(
    dir: &Path,
    implicit: bool,
) -> (
    SocketAddr,
    Arc<SinkStats>,
    relaylog::shutdown::Trigger,
    String,
) {
    use relaylog::simulator::smtp::{SinkTls, SmtpSink};
    let _ = cert_files(dir, "upstream");
    let (crt, key) = (dir.join("upstream.crt"), dir.join("upstream.key"));
    let acceptor =
        tokio_rustls::TlsAcceptor::from(relaylog::ingress::tls::server_config(&crt, &key).unwrap());
    let tls = if implicit {
        SinkTls::Implicit(acceptor)
    } else {
        SinkTls::StartTls(acceptor)
    };
    let sink = SmtpSink::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_tls(tls);
    let addr = sink.local_addr().unwrap();
    let stats = sink.stats.clone();
    let (trigger, shutdown) = relaylog::shutdown::channel();
    tokio::spawn(sink.run(shutdown));
    (
        addr,
        stats,
        trigger,
        format!("upstream-ca = \"{}\"\n", crt.display()),
    )
}

/// One message through; its outcome carries the upstream's queue id.
async fn one_message(mail: &Mail, to: &str) -> Reply {
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert_eq!(greeting.code, 220, "{}", text(&greeting));
    assert_eq!(c.code("EHLO client.example").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code(&format!("RCPT TO:<{to}>")).await, 250);
    assert_eq!(c.code("DATA").await, 354);
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    let done = c.reply().await;
    assert_eq!(c.code("QUIT").await, 221);
    done
}

/// TLS towards the upstream: implicit (`smtps://`) and STARTTLS (`upstream-starttls`),
/// both verified against `upstream-ca`. An upstream whose certificate is not trusted,
/// or that does not offer STARTTLS, is never spoken to in the clear: the client hears
/// `421 4.4.2`.
#[tokio::test]
async fn tls_towards_the_upstream_is_implicit_or_starttls_and_verified() {
    for implicit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (addr, stats, _keep, ca) = tls_sink(dir.path(), implicit).await;
        let upstream = if implicit {
            format!("upstream = \"smtps://localhost:{}\"\n", addr.port())
        } else {
            format!(
                "upstream = \"smtp://localhost:{}\"\nupstream-starttls = true\n",
                addr.port()
            )
        };
        let mail = Mail::start(dir.path(), &format!("{upstream}{ca}"), "").await;
        let done = one_message(&mail, "jan@example.nl").await;
        assert_eq!(done.code, 250, "{}", text(&done));
        assert_eq!(stats.messages.load(Ordering::SeqCst), 1);
        mail.settle().await;
        let found = mail.by_recipient("jan@example.nl");
        assert_eq!(found.len(), 1);
        let o = found[0].outcome.as_ref().unwrap();
        assert_eq!(o.outcome, Outcome::Accepted);
        assert_eq!(o.upstream_message_id, done.queue_id());
        mail.running.shutdown().await;

        // Without upstream-ca the system roots do not trust the sink's certificate.
        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::start(dir.path(), &upstream, "").await;
        let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
        assert!(
            text(&greeting).starts_with("421 4.4.2 "),
            "implicit={implicit}: {}",
            text(&greeting)
        );
        assert!(c.closed().await);
        let metrics = reqwest_metrics(&mail.admin).await;
        assert!(metrics.contains("reason=\"upstream_tls\""), "{metrics}");
        mail.running.shutdown().await;
        assert_eq!(stats.messages.load(Ordering::SeqCst), 1);
    }

    // upstream-starttls in front of an upstream that does not offer it.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Mail::start(plain_dir.path(), "", "").await;
    let dir = tempfile::tempdir().unwrap();
    let _ = cert_files(dir.path(), "ca");
    let mail = Mail::start(
        dir.path(),
        &format!(
            "upstream = \"smtp://127.0.0.1:{}\"\nupstream-starttls = true\nupstream-ca = \"{}\"\n",
            plain.addr.port(),
            dir.path().join("ca.crt").display()
        ),
        "",
    )
    .await;
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert!(
        text(&greeting).starts_with("421 4.4.2 "),
        "{}",
        text(&greeting)
    );
    assert!(c.closed().await);
    let metrics = reqwest_metrics(&mail.admin).await;
    assert!(
        metrics.contains("reason=\"upstream_starttls\""),
        "{metrics}"
    );
    mail.running.shutdown().await;
    plain.running.shutdown().await;
}

/// An upstream that takes the content and never answers: after `upstream-timeout` the
/// client hears `421 4.4.2`, and the records say `failed` (never accepted).
#[tokio::test]
async fn an_upstream_that_stops_answering_gets_421_and_a_failed_outcome() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = silent.accept().await.unwrap();
        let (r, mut w) = tcp.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 silent ESMTP\r\n").await.unwrap();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply: &[u8] = match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                _ if in_data => continue, // never answers the end of data
                Some("EHLO") => b"250-silent\r\n250 PIPELINING\r\n",
                Some("DATA") => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                _ => b"250 ok\r\n",
            };
            w.write_all(reply).await.unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(
        dir.path(),
        &format!("upstream = \"smtp://127.0.0.1:{port}\"\nupstream-timeout = \"500ms\"\n"),
        "",
    )
    .await;
    let done = one_message_unanswered(&mail).await;
    assert!(text(&done).starts_with("421 4.4.2 "), "{}", text(&done));
    mail.settle().await;
    let found = mail.by_recipient("jan@example.nl");
    assert_eq!(found.len(), 1, "recorded before the content went upstream");
    let o = found[0].outcome.as_ref().expect("an outcome");
    assert_eq!(o.outcome, Outcome::Failed);
    assert_eq!(o.upstream_message_id, None);
    mail.running.shutdown().await;
}

async fn one_message_unanswered(mail: &Mail) -> Reply {
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert_eq!(greeting.code, 220, "{}", text(&greeting));
    assert_eq!(c.code("EHLO client.example").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<jan@example.nl>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    c.send(b"Subject: x\r\n\r\nhello\r\n.\r\n").await;
    let done = c.reply().await;
    assert!(c.closed().await, "closed after 421");
    done
}

/// A fake upstream on loopback: greets with `greeting`, then answers each command line
/// with what `answer` says. Its port.
async fn scripted_upstream(greeting: &'static str, answer: fn(&str) -> &'static str) -> u16 {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut lines = BufReader::new(r).lines();
                if w.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(answer(&line).as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The upstream decides who is served: a greeting other than 220 reaches the client
/// and the session ends there (no command goes to a leg that never got to XCLIENT or
/// STARTTLS); an upstream that refuses XCLIENT gets no client at all.
#[tokio::test]
async fn an_upstream_that_will_not_serve_is_heard_and_nothing_is_passed() {
    let dir = tempfile::tempdir().unwrap();
    let port = scripted_upstream("554 5.7.1 not for you\r\n", |_| "250 2.0.0 Ok\r\n").await;
    let mail = Mail::start(
        dir.path(),
        &format!("upstream = \"smtp://127.0.0.1:{port}\"\n"),
        "",
    )
    .await;
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert_eq!(text(&greeting), "554 5.7.1 not for you\r\n");
    assert!(c.closed().await);
    mail.running.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let port = scripted_upstream("220 up ESMTP\r\n", |line| {
        if line.starts_with("XCLIENT") {
            "550 5.7.0 Error: insufficient authorization\r\n"
        } else {
            "250 up\r\n"
        }
    })
    .await;
    let mail = Mail::start(
        dir.path(),
        &format!("upstream = \"smtp://127.0.0.1:{port}\"\nxclient = true\n"),
        "",
    )
    .await;
    let (mut c, greeting) = SmtpClient::connect(mail.addr).await;
    assert!(
        text(&greeting).starts_with("421 4.4.2 "),
        "{}",
        text(&greeting)
    );
    assert!(c.closed().await);
    let metrics = reqwest_metrics(&mail.admin).await;
    assert!(metrics.contains("reason=\"upstream_xclient\""), "{metrics}");
    mail.running.shutdown().await;
}

/// BDAT only goes to an upstream that offered CHUNKING in its last EHLO reply (after
/// HELO none is offered): otherwise the upstream would read the chunk as commands,
/// and a message hidden in it would go through unrecorded.
#[tokio::test]
async fn bdat_is_never_passed_to_an_upstream_that_did_not_offer_chunking() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("HELO client").await, 250);
    assert_eq!(c.code("MAIL FROM:<decoy@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<decoy@example.net>").await, 250);
    let hidden = b"RSET\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\r\nhi\r\n.\r\n";
    c.send(format!("BDAT {} LAST\r\n", hidden.len()).as_bytes())
        .await;
    c.send(hidden).await;
    assert_eq!(
        text(&c.reply().await),
        "502 5.5.1 Error: BDAT without CHUNKING\r\n"
    );
    assert_eq!(c.code("NOOP").await, 250, "the chunk was read and dropped");
    assert_eq!(c.code("QUIT").await, 221);
    assert_eq!(mail.queued(), 0);
    mail.settle().await;
    assert!(mail.by_recipient("victim@example.net").is_empty());
    assert!(mail.by_recipient("decoy@example.net").is_empty());
    mail.running.shutdown().await;
}

/// RSET, HELO or EHLO after some BDAT chunks went upstream: the client abandoned the
/// message; its records say so (not a shutdown), and nothing is delivered.
#[tokio::test]
async fn a_reset_between_chunks_abandons_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    for (n, reset) in ["RSET", "HELO client", "EHLO client"]
        .into_iter()
        .enumerate()
    {
        let (mut c, _) = SmtpClient::connect(mail.addr).await;
        assert_eq!(c.code("EHLO client").await, 250);
        assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
        assert_eq!(
            c.code(&format!("RCPT TO:<reset{n}@example.net>")).await,
            250
        );
        c.send(b"BDAT 3\r\nabc").await;
        assert_eq!(c.reply().await.code, 250);
        assert_eq!(c.code(reset).await, 250);
        assert_eq!(c.code("QUIT").await, 221);
        mail.settle().await;
        let found = mail.by_recipient(&format!("reset{n}@example.net"));
        let o = found[0].outcome.clone().unwrap();
        assert_eq!(o.outcome, Outcome::FailedClientGone, "{reset}");
    }
    assert_eq!(mail.queued(), 0);
    let metrics = reqwest_metrics(&mail.admin).await;
    assert!(!metrics.contains("reason=\"shutdown\""), "{metrics}");
    mail.running.shutdown().await;
}

/// A client that stalls mid-DATA meets `data-timeout`; one that trickles bytes meets
/// `max-session`. Either way `421 4.4.2`, no end of data upstream, and the records
/// say the message was not sent.
#[tokio::test]
async fn slow_content_meets_the_data_timeout_and_max_session() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    for (limits, trickle) in [
        ("data-timeout = \"300ms\"\n", false),
        ("max-session = \"600ms\"\n", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mail = Mail::start(dir.path(), limits, "").await;
        let (r, mut w) = TcpStream::connect(mail.addr).await.unwrap().into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(
            b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<slow@example.net>\r\nDATA\r\n",
        )
        .await
        .unwrap();
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.starts_with("354 ") {
                break;
            }
        }
        w.write_all(b"a slow start\r\n").await.unwrap();
        // One byte every 100 ms: each read is well within data-timeout.
        let trickling = tokio::spawn(async move {
            if trickle {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if w.write_all(b"x").await.is_err() {
                        break;
                    }
                }
            }
            w
        });
        let bye = tokio::time::timeout(T, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(bye.starts_with("421 4.4.2 "), "{limits}: {bye}");
        trickling.abort();
        assert_eq!(mail.queued(), 0);
        mail.settle().await;
        let o = mail.by_recipient("slow@example.net")[0]
            .outcome
            .clone()
            .unwrap();
        assert_eq!(o.outcome, Outcome::FailedClientGone, "{limits}");
        mail.running.shutdown().await;
    }
}

/// What relaylog refuses itself: bytes that read differently to different servers
/// inside a command, addresses that are not what the upstream would deliver to, an
/// unauthenticated AUTH= on MAIL; a recipient given twice is recorded once; and after
/// 20 refusals the session is closed.
#[tokio::test]
async fn bad_commands_and_addresses_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("NOOP a\0b").await, 500);
    assert_eq!(c.code("NOOP a\rb").await, 500);
    assert_eq!(c.code("MAIL FROM:<bob(comment)@example.org>").await, 501);
    // A path Postfix would end elsewhere (it reads `<` as nesting).
    assert_eq!(c.code("MAIL FROM:<@<:>evil@example.com>").await, 501);
    // AUTH= from a client that did not authenticate goes upstream as AUTH=<>.
    assert_eq!(
        c.code("MAIL FROM:<a@example.org> AUTH=<ceo@example.org>")
            .await,
        250
    );
    assert_eq!(c.code("RCPT TO:<a b@example.net>").await, 501);
    // Where relaylog and Postfix could read a different mailbox.
    assert_eq!(c.code("RCPT TO:<decoy\\>@evil.example>").await, 501);
    assert_eq!(
        c.code("RCPT TO:<@relay.example:twice@example.net>").await,
        250
    );
    assert_eq!(c.code("RCPT TO:<twice@example.net>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.cmd("x\r\n.").await.code, 250);
    mail.settle().await;
    let found = mail.by_recipient("twice@example.net");
    assert_eq!(found.len(), 1, "one recipient, given twice");
    assert_eq!(found[0].segments, 1);
    // Six refusals so far; fourteen more and the session is over.
    for _ in 0..14 {
        assert_eq!(c.code("XFORWARD ADDR=10.0.0.1").await, 502);
    }
    let bye = c.reply().await;
    assert_eq!(
        text(&bye),
        "421 4.7.0 relaylog: too many errors, closing\r\n"
    );
    assert!(c.closed().await);
    mail.running.shutdown().await;
}

/// Commands pipelined after STARTTLS were sent in the clear and are never read as if
/// they came under TLS (the session closes); after the handshake the client starts
/// over with EHLO (RFC 3207).
#[tokio::test]
async fn starttls_discards_what_came_before_and_wants_a_new_ehlo() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, keys) = cert_files(dir.path(), "mail");
    let mail = Mail::start(dir.path(), &keys, "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        .await;
    assert_eq!(c.reply().await.code, 220);
    let bye = c.reply().await;
    assert!(text(&bye).starts_with("421 4.7.0 "), "{}", text(&bye));

    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("STARTTLS").await, 220);
    let Wire { io, .. } = c.wire;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = trusting(&ck).connect(name, io).await.unwrap();
    let mut c = SmtpClient {
        wire: Wire::new(Box::new(tls)),
        port: c.port,
    };
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 503);
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("QUIT").await, 221);
    mail.running.shutdown().await;
}

/// A pipelined batch goes upstream in one write (the sink offers PIPELINING), and the
/// client gets every reply in its place: the upstream's, and relaylog's own refusals
/// between them (a bad address, a recipient over `max-recipients`); only recipients the
/// upstream accepted are recorded. After HELO (no PIPELINING) the same batch is passed
/// one command at a time, with the same replies.
#[tokio::test]
async fn a_pipelined_batch_keeps_every_reply_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "max-recipients = 3\n", "").await;
    for greet in ["EHLO client", "HELO client"] {
        let (mut c, _) = SmtpClient::connect(mail.addr).await;
        assert_eq!(c.code(greet).await, 250);
        let tag = &greet[..4];
        let batch = format!(
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<one-{tag}@example.net>\r\nRCPT TO:<bad address@example.net>\r\n\
             RCPT TO:<refuse-{tag}@example.net>\r\nRCPT TO:<two-{tag}@example.net>\r\nRCPT TO:<three-{tag}@example.net>\r\n\
             RCPT TO:<four-{tag}@example.net>\r\nDATA\r\n"
        );
        c.send(batch.as_bytes()).await;
        let mut codes = Vec::new();
        for _ in 0..8 {
            codes.push(c.reply().await.code);
        }
        // At the limit the batch's replies are read first: the limit counts only the
        // accepted, as in lockstep.
        assert_eq!(codes, [250, 250, 501, 550, 250, 250, 452, 354], "{greet}");
        assert_eq!(c.cmd("hello\r\n.").await.code, 250);
        assert_eq!(c.code("QUIT").await, 221);
        mail.settle().await;
        for (who, n) in [
            ("one", 1),
            ("two", 1),
            ("refuse", 0),
            ("three", 1),
            ("four", 0),
        ] {
            let found = mail.by_recipient(&format!("{who}-{tag}@example.net"));
            assert_eq!(found.len(), n, "{greet}: {who}");
            if let Some(f) = found.first() {
                assert_eq!(f.segments, 3, "{greet}: the recipients accepted");
            }
        }
    }
    assert_eq!(mail.queued(), 2);
    mail.running.shutdown().await;
}

/// An upstream that offers PIPELINING and answers nothing of a batch until it has the
/// MAIL and both RCPTs: relaylog in lockstep would wait on it forever. With `hang_up`
/// it closes instead, having read the batch.
async fn batch_upstream(hang_up: bool) -> u16 {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (r, mut w) = tcp.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 batch ESMTP\r\n").await.unwrap();
        let mut envelope = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-batch\r\n250 PIPELINING\r\n",
                "MAIL" | "RCPT" => {
                    envelope += 1;
                    if envelope < 3 {
                        continue;
                    }
                    if hang_up {
                        return;
                    }
                    b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                }
                "DATA" => b"354 go ahead\r\n",
                "QUIT" => b"221 2.0.0 Bye\r\n",
                _ if line == "." => b"250 2.0.0 Ok: queued as B1\r\n",
                _ => continue,
            };
            w.write_all(reply).await.unwrap();
        }
    });
    port
}

/// The MAIL and RCPT commands of a pipelined batch reach the upstream together; an
/// upstream that hangs up mid-batch gets the client a `421 4.4.2`, and nothing is
/// recorded.
#[tokio::test]
async fn a_batch_reaches_the_upstream_in_one_write() {
    for hang_up in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let port = batch_upstream(hang_up).await;
        let mail = Mail::start(
            dir.path(),
            &format!("upstream = \"smtp://127.0.0.1:{port}\"\nupstream-timeout = \"3s\"\n"),
            "",
        )
        .await;
        let (mut c, _) = SmtpClient::connect(mail.addr).await;
        assert_eq!(c.code("EHLO client").await, 250);
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b1@example.net>\r\nRCPT TO:<b2@example.net>\r\nDATA\r\n")
            .await;
        if hang_up {
            let bye = c.reply().await;
            assert!(text(&bye).starts_with("421 4.4.2 "), "{}", text(&bye));
            assert!(c.closed().await);
        } else {
            let mut codes = Vec::new();
            for _ in 0..4 {
                codes.push(c.reply().await.code);
            }
            assert_eq!(codes, [250, 250, 250, 354]);
            assert_eq!(
                text(&c.cmd("hi\r\n.").await),
                "250 2.0.0 Ok: queued as B1\r\n"
            );
        }
        mail.settle().await;
        let found = mail.by_recipient("b1@example.net");
        assert_eq!(found.len(), usize::from(!hang_up), "hang_up={hang_up}");
        mail.running.shutdown().await;
    }
}

/// Edges of the batch: more commands than `MAX_PIPELINE` in one write; a MAIL the
/// upstream refuses, with the RCPTs behind it; twenty refusals of relaylog's own in
/// one batch, whose replies all come, in order, before the `421 4.7.0`.
#[tokio::test]
async fn long_batches_refused_mail_and_errors_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "max-message-bytes = 20000000\n", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    let mut batch = b"MAIL FROM:<a@example.org>\r\n".to_vec();
    for n in 0..150 {
        batch.extend_from_slice(format!("RCPT TO:<many{n}@example.net>\r\n").as_bytes());
    }
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch).await;
    for n in 0..151 {
        assert_eq!(c.reply().await.code, 250, "reply {n}");
    }
    assert_eq!(c.reply().await.code, 354);
    assert_eq!(c.cmd("hi\r\n.").await.code, 250);
    // The sink refuses a declared size over its own limit (relaylog's is higher).
    c.send(b"MAIL FROM:<a@example.org> SIZE=15000000\r\nRCPT TO:<orphan@example.net>\r\nDATA\r\n")
        .await;
    let codes = [
        c.reply().await.code,
        c.reply().await.code,
        c.reply().await.code,
    ];
    assert_eq!(codes, [552, 503, 503]);
    mail.settle().await;
    assert_eq!(mail.by_recipient("many149@example.net")[0].segments, 150);
    assert!(mail.by_recipient("orphan@example.net").is_empty());

    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    let mut batch = b"MAIL FROM:<a@example.org>\r\n".to_vec();
    for n in 0..25 {
        batch.extend_from_slice(format!("RCPT TO:<bad{n}%x@example.net>\r\n").as_bytes());
    }
    c.send(&batch).await;
    assert_eq!(c.reply().await.code, 250, "the upstream's reply first");
    for n in 0..20 {
        assert_eq!(c.reply().await.code, 501, "refusal {n}");
    }
    assert_eq!(
        text(&c.reply().await),
        "421 4.7.0 relaylog: too many errors, closing\r\n"
    );
    assert!(c.closed().await);
    mail.running.shutdown().await;
}

/// AUTH whose identity relaylog cannot record: PLAIN acting as someone else is
/// refused (`535`, before or after a challenge); an identity that is empty once
/// decoded, accepted by the upstream, closes the session (`421 4.7.0`).
#[tokio::test]
async fn auth_that_relaylog_could_not_record_is_refused() {
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    let spaced = b64(b"\0\talice\0pw");
    assert_eq!(
        c.code(&format!("AUTH PLAIN {spaced}")).await,
        535,
        "a name the SASL library would trim"
    );
    let proxy = b64(b"victim\0attacker\0pw");
    assert_eq!(c.code(&format!("AUTH PLAIN {proxy}")).await, 535);
    assert_eq!(c.code("AUTH PLAIN").await, 334);
    assert_eq!(c.code(&proxy).await, 535);
    assert_eq!(mail.sink().auths.load(Ordering::SeqCst), 0);
    let nobody = b64(b"\0\0pw");
    assert_eq!(
        text(&c.cmd(&format!("AUTH PLAIN {nobody}")).await),
        "421 4.7.0 relaylog: cannot tell who authenticated, closing\r\n"
    );
    assert!(c.closed().await);
    mail.running.shutdown().await;
}

/// A single BDAT chunk larger than `max-message-bytes` closes the session (`552`;
/// not read through, nothing recorded).
#[tokio::test]
async fn a_bdat_chunk_over_the_limit_closes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let mail = Mail::start(dir.path(), "max-message-bytes = 1000\n", "").await;
    let (mut c, _) = SmtpClient::connect(mail.addr).await;
    assert_eq!(c.code("EHLO client").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@example.org>").await, 250);
    assert_eq!(c.code("RCPT TO:<huge@example.net>").await, 250);
    assert_eq!(c.code("BDAT 5000 LAST").await, 552);
    assert!(c.closed().await);
    assert_eq!(mail.queued(), 0);
    mail.settle().await;
    assert!(
        mail.by_recipient("huge@example.net").is_empty(),
        "refused before its records"
    );
    mail.running.shutdown().await;
}
