//! Connection abuse on every listener (relay HTTP, HTTPS, SMTP, SMPP, admin): slow
//! heads, slow bodies, idle floods, half-open TLS handshakes, oversized heads, lines
//! and PDUs. Each is cut off by a limit and counted (`relaylog_connections_cut_total`,
//! `relaylog_connections_refused_total`), and a legitimate client of the same listener
//! is served while it goes on. Abusers connect from 127.0.0.1, legitimate clients
//! from 127.0.0.2 (all of 127/8 is loopback), so that `max-connections-per-peer` tells
//! them apart as it would two hosts.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::smpp::Esme;
use relaylog::serve::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ABUSER: &str = "127.0.0.1";
const CLIENT: &str = "127.0.0.2";

/// A relay with an HTTP listener `sms`, an HTTPS one `sms-tls`, an SMTP one `mail` and
/// an SMPP one `smpp` (each in front of its simulator), all with one-second limits,
/// and the admin listener over TLS.
struct Abused {
    running: Running,
    cert: rcgen::CertifiedKey<rcgen::KeyPair>,
}

impl Abused {
    /// Each relay listener takes `per_peer` connections from one peer, and the
    /// TLS handshake and first head must come within `header_timeout`.
    async fn start(dir: &Path, per_peer: usize, header_timeout: &str) -> Abused {
        common::init_keys(dir);
        let (cert, tls) = common::cert_files(dir, "tls");
        let limits = format!(
            "header-timeout = \"{header_timeout}\"\nmax-connections-per-peer = {per_peer}\nmax-connections = {}\n",
            per_peer * 4
        );
        let text = format!(
            "{}[[listener]]\nname = \"sms\"\nlisten = \"127.0.0.1:0\"\nprofile = \"kannel\"\nrequest-timeout = \"1s\"\nmax-body-bytes = 1024\n{limits}\n\
             [[listener]]\nname = \"sms-tls\"\nlisten = \"127.0.0.1:0\"\nprofile = \"kannel\"\n{tls}{limits}\n\
             [[listener]]\nname = \"mail\"\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:0\"\ncommand-timeout = \"1s\"\ndata-timeout = \"1s\"\n{tls}{limits}\n\
             [[listener]]\nname = \"smpp\"\nprotocol = \"smpp\"\nlisten = \"127.0.0.1:0\"\nbind-timeout = \"1s\"\nmax-pdu-bytes = 4096\n{limits}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{tls}",
            common::store_table(dir, "queue-capacity = 65536\n")
        );
        let config = relaylog::config::Config::parse(&text, Path::new("test.toml")).unwrap();
        let running = common::start_serve(config, Arc::new(relaylog::clock::SystemClock))
            .await
            .unwrap();
        Abused { running, cert }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.running.addr(listener).unwrap()
    }

    /// Waits (up to 15 s) until `metric{listener="…",reason="…"}` reaches `at_least`.
    async fn counted(&self, metric: &str, listener: &str, reason: &str, at_least: u64) {
        let name =
            format!("relaylog_{metric}_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.running.metrics.encode();
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix(&name))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap());
            if n >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}reached {n}, not {at_least}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Everything the peer sends until it closes, within `within` (which fails the test).
async fn until_closed(s: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}; it said: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// A Kannel sendsms over `s`: the reply's status line.
async fn sendsms<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) -> String {
    s.write_all(
        b"GET /cgi-bin/sendsms?username=u&password=p&to=%2B31612345678&text=hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = until_closed(&mut s, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A legitimate client's message to the HTTP listener is accepted.
async fn served_http(addr: SocketAddr) {
    let status = sendsms(connect_from(CLIENT, addr).await).await;
    assert!(status.starts_with("HTTP/1.1 2"), "not served: {status:?}");
}

/// Raises this process's open-file limit for the floods (relay and abuser share it).
fn enough_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= n,
        "the test needs {n} open files; the hard limit is {}",
        lim.rlim_max
    );
}

/// Thousands of connections from one peer that never say a word: the peer gets its
/// `max-connections-per-peer`, the rest are refused at once, and those it got are cut
/// at `header-timeout`; another peer is served throughout, and the first again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flood_is_capped_per_peer_and_cut() {
    enough_files(8192);
    let dir = tempfile::tempdir().unwrap();
    // Time enough to take all 2,000 before the first are cut, on a slow machine.
    let relay = Abused::start(dir.path(), 500, "5s").await;
    let addr = relay.addr("sms");
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(connect_from(ABUSER, addr).await);
    }
    relay
        .counted(
            "connections_refused",
            "sms",
            "max_connections_per_peer",
            1500,
        )
        .await;
    served_http(addr).await;
    relay
        .counted("connections_cut", "sms", "header_timeout", 500)
        .await;
    for mut s in idle {
        // Refused ones were told 503; the others were closed without a word.
        until_closed(&mut s, Duration::from_secs(5)).await;
    }
    assert!(
        sendsms(connect_from(ABUSER, addr).await)
            .await
            .starts_with("HTTP/1.1 2"),
        "the peer is served again once its connections are gone"
    );
}

/// Slow heads (slowloris), slow bodies, oversized heads and bodies on the HTTP
/// listener: each cut by its limit and counted, a legitimate client served meanwhile.
#[tokio::test]
async fn slow_and_oversized_http_requests_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Abused::start(dir.path(), 64, "1s").await;
    let addr = relay.addr("sms");

    // A head a byte at a time, never finished.
    let mut slow_head = connect_from(ABUSER, addr).await;
    let dripping = tokio::spawn(async move {
        let started = Instant::now();
        slow_head.write_all(b"GET /cgi-bin/sendsms?").await.unwrap();
        while slow_head.write_all(b"a").await.is_ok() && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    });
    // A body announced and never finished.
    let mut slow_body = connect_from(ABUSER, addr).await;
    slow_body
        .write_all(b"POST /cgi-bin/sendsms HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\nusername=u&")
        .await
        .unwrap();
    served_http(addr).await;
    let cut_after = dripping.await.unwrap();
    assert!(cut_after < Duration::from_secs(10), "the slow head was cut");
    relay
        .counted("connections_cut", "sms", "header_timeout", 1)
        .await;
    let reply = until_closed(&mut slow_body, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    relay
        .counted("connections_cut", "sms", "body_timeout", 1)
        .await;

    // A head over 64 KiB, and a body over max-body-bytes.
    let mut big_head = connect_from(ABUSER, addr).await;
    let mut head = b"GET /cgi-bin/sendsms HTTP/1.1\r\nX-Pad: ".to_vec();
    head.resize(70 * 1024, b'a');
    let _ = big_head.write_all(&head).await;
    let reply = until_closed(&mut big_head, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    relay
        .counted("connections_cut", "sms", "head_too_large", 1)
        .await;
    let mut big_body = connect_from(ABUSER, addr).await;
    big_body
        .write_all(b"POST /cgi-bin/sendsms HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let reply = until_closed(&mut big_body, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    relay
        .counted("connections_cut", "sms", "body_too_large", 1)
        .await;
    served_http(addr).await;
}

/// Half-open TLS handshakes (nothing sent, or half a ClientHello) on the HTTPS and
/// admin listeners are cut at the handshake deadline; a real TLS client is served
/// meanwhile, and the admin listener also cuts slow heads and slow bodies and keeps
/// one peer to its share of places.
#[tokio::test]
async fn half_open_tls_and_admin_abuse_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Abused::start(dir.path(), 64, "1s").await;
    let (https, admin) = (relay.addr("sms-tls"), relay.running.admin.unwrap());
    let tls = common::trusting(&relay.cert);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    let mut silent = connect_from(ABUSER, https).await;
    let mut half = connect_from(ABUSER, https).await;
    // A TLS record header announcing a 512-byte handshake message, then 5 bytes of it.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .await
        .unwrap();
    let served = tls
        .connect(name.clone(), connect_from(CLIENT, https).await)
        .await
        .unwrap();
    let status = sendsms(served).await;
    assert!(status.starts_with("HTTP/1.1 2"), "{status}");
    until_closed(&mut silent, Duration::from_secs(5)).await;
    until_closed(&mut half, Duration::from_secs(5)).await;
    relay
        .counted("connections_cut", "sms-tls", "handshake_timeout", 2)
        .await;

    // The admin listener: its limits are fixed (10 s), so these run together.
    let admin_half = connect_from(ABUSER, admin).await;
    let mut slow_head = tls
        .connect(name.clone(), connect_from(ABUSER, admin).await)
        .await
        .unwrap();
    slow_head
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut slow_body = tls
        .connect(name.clone(), connect_from(ABUSER, admin).await)
        .await
        .unwrap();
    slow_body
        .write_all(b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"officer\":")
        .await
        .unwrap();
    // From a third address: requests, and their replies never read. The replies fill
    // the socket's buffers; the write that stalls is cut.
    let mut deaf = tls
        .connect(name.clone(), connect_from("127.0.0.3", admin).await)
        .await
        .unwrap();
    let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4000);
    let deaf = tokio::spawn(async move {
        let _ = deaf.write_all(&requests).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    // Its 16 places for one peer: the abuser has 3; 13 more, and the next is refused.
    let mut more = Vec::new();
    for _ in 0..13 {
        more.push(connect_from(ABUSER, admin).await);
    }
    let mut refused = connect_from(ABUSER, admin).await;
    relay
        .counted(
            "connections_refused",
            "admin",
            "max_connections_per_peer",
            1,
        )
        .await;
    assert_eq!(
        until_closed(&mut refused, Duration::from_secs(5)).await,
        b""
    );
    let mut scrape = tls
        .connect(name.clone(), connect_from(CLIENT, admin).await)
        .await
        .unwrap();
    scrape
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = until_closed(&mut scrape, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let mut admin_half = admin_half;
    until_closed(&mut admin_half, Duration::from_secs(15)).await;
    until_closed(&mut slow_head, Duration::from_secs(15)).await;
    let reply = until_closed(&mut slow_body, Duration::from_secs(15)).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    relay
        .counted("connections_cut", "admin", "handshake_timeout", 1)
        .await;
    relay
        .counted("connections_cut", "admin", "header_timeout", 1)
        .await;
    relay
        .counted("connections_cut", "admin", "body_timeout", 1)
        .await;
    relay
        .counted("connections_cut", "admin", "reply_timeout", 1)
        .await;
    deaf.abort();
}

/// SMTP: a silent client is cut at command-timeout, a message whose content stalls at
/// data-timeout, a STARTTLS handshake never begun at header-timeout; an oversized line
/// is refused (and enough of them end the session); a flood from one peer is told 421;
/// a legitimate client's message goes through meanwhile.
#[tokio::test]
async fn smtp_abuse_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Abused::start(dir.path(), 8, "1s").await;
    let addr = relay.addr("mail");
    let mut silent = connect_from(ABUSER, addr).await;
    let (mut slow_data, _) = common::SmtpClient::over(connect_from(ABUSER, addr).await).await;
    assert_eq!(slow_data.code("EHLO abuser.example").await, 250);
    assert_eq!(slow_data.code("MAIL FROM:<a@abuser.example>").await, 250);
    assert_eq!(slow_data.code("RCPT TO:<b@example.org>").await, 250);
    assert_eq!(slow_data.code("DATA").await, 354);
    slow_data.send(b"Subject: never ends\r\n").await;
    let (mut half_tls, _) = common::SmtpClient::over(connect_from(ABUSER, addr).await).await;
    assert_eq!(half_tls.code("EHLO abuser.example").await, 250);
    assert_eq!(half_tls.code("STARTTLS").await, 220);
    let mut flood = Vec::new();
    for _ in 0..5 {
        flood.push(connect_from(ABUSER, addr).await);
    }
    let mut refused = connect_from(ABUSER, addr).await;
    let told = until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(
        told.starts_with(b"421 4.7.0"),
        "{}",
        String::from_utf8_lossy(&told)
    );
    drop(flood);
    // Long lines from the first moment, before command-timeout could cut the session
    // (once the flood's places are given back).
    let shouting = tokio::spawn(async move {
        let line = [
            vec![b'a'; relaylog::smtp::MAX_COMMAND_LINE + 100],
            b"\r\n".to_vec(),
        ]
        .concat();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut long_lines = loop {
            let mut s = connect_from(ABUSER, addr).await;
            let mut greeting = [0u8; 4];
            if s.read_exact(&mut greeting).await.is_ok() && &greeting == b"220 " {
                break s;
            }
            assert!(Instant::now() < deadline, "no place for the long lines");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for _ in 0..=relaylog::ingress::smtp::session::MAX_ERRORS {
            if long_lines.write_all(&line).await.is_err() {
                break;
            }
        }
        until_closed(&mut long_lines, Duration::from_secs(10)).await
    });

    let (mut c, greeting) = common::SmtpClient::over(connect_from(CLIENT, addr).await).await;
    assert_eq!(greeting.code, 220);
    assert_eq!(c.code("EHLO client.example").await, 250);
    assert_eq!(c.code("MAIL FROM:<a@client.example>").await, 250);
    assert_eq!(c.code("RCPT TO:<b@example.org>").await, 250);
    assert_eq!(c.code("DATA").await, 354);
    assert_eq!(c.code("Subject: hi\r\n\r\nhello\r\n.").await, 250);
    assert_eq!(c.code("QUIT").await, 221);

    let said = shouting.await.unwrap();
    let said = String::from_utf8_lossy(&said);
    assert!(said.contains("500 5.5.2 Error: line too long"), "{said}");
    assert!(
        said.contains("421 4.7.0 relaylog: too many errors"),
        "{said}"
    );
    relay
        .counted("connections_cut", "mail", "too_many_errors", 1)
        .await;
    assert_eq!(slow_data.reply().await.code, 421);
    relay
        .counted("connections_cut", "mail", "data_timeout", 1)
        .await;
    assert!(half_tls.closed().await);
    relay
        .counted("connections_cut", "mail", "handshake_timeout", 1)
        .await;
    let told = until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&told).contains("\r\n421 "),
        "{}",
        String::from_utf8_lossy(&told)
    );
    relay
        .counted("connections_cut", "mail", "command_timeout", 1)
        .await;
    relay
        .counted("connections_refused", "mail", "max_connections_per_peer", 1)
        .await;
}

/// SMPP: a connection that never binds is cut at bind-timeout, a PDU longer than
/// max-pdu-bytes gets a generic_nack and the connection closes; a legitimate ESME
/// binds and submits meanwhile.
#[tokio::test]
async fn smpp_abuse_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Abused::start(dir.path(), 8, "1s").await;
    let addr = relay.addr("smpp");
    let mut silent = connect_from(ABUSER, addr).await;
    let mut huge = connect_from(ABUSER, addr).await;
    // command_length 1 MiB: more than max-pdu-bytes.
    huge.write_all(&[0x00, 0x10, 0x00, 0x00, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1])
        .await
        .unwrap();
    let mut esme = Esme::over(connect_from(CLIENT, addr).await);
    assert_eq!(esme.bind(b"acme", b"pw").await.status, 0);
    esme.send(&common::smpp::submit(b"31612345678", 2)).await;
    let resp = esme.header().await;
    assert_eq!((resp.sequence, resp.status), (2, 0), "submitted");
    let nack = until_closed(&mut huge, Duration::from_secs(5)).await;
    assert_eq!(&nack[4..8], &[0x80, 0, 0, 0], "a generic_nack");
    relay
        .counted("connections_cut", "smpp", "pdu_length", 1)
        .await;
    until_closed(&mut silent, Duration::from_secs(5)).await;
    relay
        .counted("connections_cut", "smpp", "bind_timeout", 1)
        .await;
}
