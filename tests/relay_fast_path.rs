//! The fast path (`ingress::http::lean`) and its hand-over to hyper: what each request
//! becomes upstream and in the store, on one keep-alive connection, whoever serves it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use relaylog::http1::{Reply, read_reply};
use relaylog::store::IndexKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KANNEL_OK: &str = "0: Accepted for delivery";

async fn connect(relay: &Relay) -> TcpStream {
    TcpStream::connect(relay.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads one reply from the relay, as a client would.
async fn reply_of(s: &mut TcpStream, buf: &mut BytesMut) -> Reply {
    read_reply(s, buf, false, 1 << 20).await.unwrap()
}

fn get(user: &str, n: u32) -> String {
    format!(
        "GET /cgi-bin/sendsms?username={user}&password=pw&to={}&text=hi HTTP/1.1\r\nHost: relay\r\n\r\n",
        number(n)
    )
}

/// A plain GET (fast path), a chunked form POST (hyper, from there on), and a plain GET
/// again, on one connection: each is forwarded once, as the client framed it, and
/// recorded under its own account.
#[tokio::test]
async fn requests_hyper_frames_go_to_hyper_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let mut s = connect(&relay).await;
    let mut buf = BytesMut::new();

    s.write_all(get("fast", 1).as_bytes()).await.unwrap();
    let r = reply_of(&mut s, &mut buf).await;
    assert_eq!((r.status, &r.body[..]), (202, KANNEL_OK.as_bytes()));

    let form = format!("username=chunked&password=pw&to={}&text=hi", number(2));
    let (a, b) = form.split_at(10);
    let chunked = format!(
        "POST /cgi-bin/sendsms HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(chunked.as_bytes()).await.unwrap();
    let r = reply_of(&mut s, &mut buf).await;
    assert_eq!(r.status, 202);

    s.write_all(get("after", 3).as_bytes()).await.unwrap();
    assert_eq!(reply_of(&mut s, &mut buf).await.status, 202);

    relay.settle().await;
    for account in ["fast", "chunked", "after"] {
        assert_eq!(
            relay.query(IndexKind::Account, account).await.len(),
            1,
            "{account}"
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[1].body,
        form.as_bytes(),
        "the chunked body went on whole"
    );
    assert_eq!(
        seen[1].headers["content-length"],
        form.len().to_string().as_str()
    );
    assert!(!seen[1].headers.contains_key("transfer-encoding"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    relay.running.shutdown().await;
}

/// Form POSTs framed by Content-Length, one whose body comes with its head (the fast
/// path extracts it from the head's one parse), one whose body comes 100 ms after it
/// (the head is read again once the body is in), then a GET: each goes upstream whole
/// and once, is recorded under its own account, on one connection each way.
#[tokio::test]
async fn form_bodies_with_their_head_or_after_it_are_relayed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let mut s = connect(&relay).await;
    let mut buf = BytesMut::new();
    let post = |user: &str, n: u32| {
        let form = format!("username={user}&password=pw&to={}&text=hi+there", number(n));
        let head = format!(
            "POST /cgi-bin/sendsms HTTP/1.1\r\nHost: relay\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            form.len()
        );
        (head, form)
    };

    let (head, together) = post("together", 1);
    s.write_all(format!("{head}{together}").as_bytes())
        .await
        .unwrap();
    assert_eq!(reply_of(&mut s, &mut buf).await.status, 202);

    let (head, later) = post("later", 2);
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(later.as_bytes()).await.unwrap();
    assert_eq!(reply_of(&mut s, &mut buf).await.status, 202);

    s.write_all(get("after", 3).as_bytes()).await.unwrap();
    assert_eq!(reply_of(&mut s, &mut buf).await.status, 202);

    relay.settle().await;
    for account in ["together", "later", "after"] {
        assert_eq!(
            relay.query(IndexKind::Account, account).await.len(),
            1,
            "{account}"
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body, together.as_bytes());
    assert_eq!(seen[1].body, later.as_bytes());
    assert!(seen[2].path_and_query.contains("username=after"));
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    relay.running.shutdown().await;
}

/// Requests sent together, before any reply, are answered in order, each once. (A
/// client that closes its side is gone, as with hyper's default: the request then in
/// flight is not forwarded, see `relay_exits`.)
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let mut s = connect(&relay).await;
    let both = format!("{}{}", get("one", 1), get("two", 2));
    s.write_all(both.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    for _ in 0..2 {
        assert_eq!(reply_of(&mut s, &mut buf).await.status, 202);
    }
    let seen: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.path_and_query.clone())
        .collect();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].contains("username=one") && seen[1].contains("username=two"));
    relay.running.shutdown().await;
}

/// Heads the fast path cannot read and bodies it will not take are refused as hyper
/// refuses them, the connection closed, nothing forwarded or recorded.
#[tokio::test]
async fn unreadable_heads_and_oversized_bodies_are_refused_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "max-body-bytes = 100\n", "").await;
    let big_head = format!(
        "GET /cgi-bin/sendsms?username=big HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "HTTP/1.1 400"),
        (
            b"GET /cgi-bin/sendsms?username=x\x01 HTTP/1.1\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"POST /cgi-bin/sendsms HTTP/1.1\r\nContent-Length: 1000\r\n\r\nusername=long",
            "HTTP/1.1 413",
        ),
        (big_head.as_bytes(), "HTTP/1.1 431"),
    ];
    for (request, want) in cases {
        let mut s = connect(&relay).await;
        // The relay may answer and close before it has read all of a large head.
        let _ = s.write_all(request).await;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(want), "{want}: {text}");
    }
    assert_eq!(up.count(), 0);
    relay.settle().await;
    assert!(relay.query(IndexKind::Account, "long").await.is_empty());
    relay.running.shutdown().await;
}

/// An upstream that answers every request with `reply`; the count is of the
/// connections it accepted.
async fn raw_upstream(reply: &'static [u8]) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests without bodies: the head's end is the request's.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, connections)
}

async fn relay_to(dir: &std::path::Path, addr: std::net::SocketAddr) -> Relay {
    let text = config_text(dir, "kannel", Some(&format!("http://{addr}")), "", "");
    Relay::start(dir, &text).await
}

/// A chunked reply with hop-by-hop headers goes back to the client whole, with its
/// length, without them, and the upstream connection is used again.
#[tokio::test]
async fn chunked_replies_go_back_whole_and_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, connections) = raw_upstream(
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Secret\r\n\
          X-Secret: 1\r\nX-Kept: 2\r\n\r\n5\r\n0: Ac\r\n13\r\ncepted for delivery\r\n0\r\n\r\n",
    )
    .await;
    let relay = relay_to(dir.path(), addr).await;
    let mut s = connect(&relay).await;
    let mut buf = BytesMut::new();
    for n in 0..2 {
        s.write_all(get("chunky", n).as_bytes()).await.unwrap();
        let r = reply_of(&mut s, &mut buf).await;
        assert_eq!((r.status, &r.body[..]), (202, KANNEL_OK.as_bytes()));
        r.fields(|f| {
            assert_eq!(f.get("x-kept"), Some(&b"2"[..]));
            assert_eq!(f.get("content-length"), Some(&b"24"[..]));
            for hop in ["x-secret", "transfer-encoding", "connection"] {
                assert!(!f.contains(hop), "{hop} went back to the client");
            }
        });
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the upstream connection is kept"
    );
    relay.settle().await;
    let found = relay.query(IndexKind::Account, "chunky").await;
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|f| f.outcome.is_some()));
    relay.running.shutdown().await;
}

/// An upstream that closes after each reply (`Connection: close`, or HTTP/1.0) gets a
/// new connection for each request; a 204 goes back without a length and the client's
/// connection goes on.
#[tokio::test]
async fn upstream_connections_are_kept_only_when_the_reply_allows() {
    for (reply, kept) in [
        (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], true),
        (
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 204 No Content\r\n\r\n", false),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
            false,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (addr, connections) = raw_upstream(reply).await;
        let relay = relay_to(dir.path(), addr).await;
        let mut s = connect(&relay).await;
        let mut buf = BytesMut::new();
        for n in 0..3 {
            s.write_all(get("nobody", n).as_bytes()).await.unwrap();
            let r = reply_of(&mut s, &mut buf).await;
            assert_eq!((r.status, r.body.len()), (204, 0));
            r.fields(|f| assert!(!f.contains("content-length"), "no length on a 204"));
        }
        let want = if kept { 1 } else { 3 };
        let text = String::from_utf8_lossy(reply);
        assert_eq!(connections.load(Ordering::SeqCst), want, "{text}");
        relay.running.shutdown().await;
    }
}

/// Shutdown does not wait for a keep-alive client that is between requests: its
/// connection is closed and shutdown ends long before shutdown-timeout.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let text = config_text(dir.path(), "kannel", Some(&up.url()), "", "")
        .replace("[store]", "[serve]\nshutdown-timeout = \"120s\"\n[store]");
    let relay = Relay::start(dir.path(), &text).await;
    let mut s = connect(&relay).await;
    let mut buf = BytesMut::new();
    s.write_all(get("idle", 1).as_bytes()).await.unwrap();
    assert_eq!(reply_of(&mut s, &mut buf).await.status, 202);
    tokio::time::timeout(Duration::from_secs(60), relay.running.shutdown())
        .await
        .expect("shutdown waited for an idle keep-alive connection");
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).await.unwrap(),
        0,
        "closed, nothing more sent"
    );
}

/// `Connection: close` from the client: the reply says so and the relay closes.
#[tokio::test]
async fn a_client_asking_to_close_gets_its_reply_and_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let up = CaptureUpstream::start(KANNEL_OK).await;
    let relay = relay_in_front_of(dir.path(), &up, "kannel", "", "").await;
    let mut s = connect(&relay).await;
    let request =
        get("closer", 1).replace("Host: relay\r\n", "Host: relay\r\nConnection: close\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 202 Accepted\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with(KANNEL_OK), "{text}");
    relay.running.shutdown().await;
}
