//! SMPP sessions through `serve` on loopback, in front of the built-in SMSC
//! simulator: bind passthrough, a window of submits recorded before they go
//! upstream, outcomes with the SMSC's message ids, what relaylog answers itself, and
//! fail closed.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::smpp::*;
use common::*;
use relaylog::canonical::Form;
use relaylog::record::{Direction, Outcome};
use relaylog::smpp::{Bind, Header, Message, SubmitResp, Writer, frame_len, id, status};
use relaylog::store::IndexKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound session with a window of 100 submits in one write: each answered with
/// the SMSC's message id, each destination recorded with that id as its outcome;
/// receipts come back to the client; enquire_link is answered; unbind ends it.
#[tokio::test]
async fn a_window_of_submits_is_recorded_and_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = SmppRelay::start(dir.path(), "", "").await;
    let mut esme = Esme::connect(relay.addr).await;
    // Before the bind, a submit is refused.
    esme.send(&submit(b"31612345678", 2)).await;
    let h = esme.header().await;
    assert_eq!(
        (h.id, h.status),
        (id::SUBMIT_SM_RESP, status::INVALID_BIND_STATUS)
    );
    let h = esme.bind(b"shop", b"secret").await;
    assert_eq!(
        (h.id, h.status),
        (id::resp(id::BIND_TRANSCEIVER), status::OK)
    );

    let mut window = Vec::new();
    for n in 0..100u32 {
        window.extend_from_slice(&submit(format!("316100000{n:02}").as_bytes(), 10 + n));
    }
    esme.send(&window).await;
    let mut ids = std::collections::HashMap::new();
    let mut receipts = 0;
    while ids.len() < 100 {
        let pdu = esme.next().await.unwrap();
        let h = Header::read(&pdu).unwrap();
        match h.id {
            id::SUBMIT_SM_RESP => {
                assert_eq!(h.status, status::OK);
                let r = SubmitResp::read(h.id, &pdu[16..]).unwrap();
                ids.insert(
                    h.sequence,
                    String::from_utf8(r.message_id.to_vec()).unwrap(),
                );
            }
            id::DELIVER_SM => {
                receipts += 1;
                esme.ack(h.sequence).await;
            }
            other => panic!("unexpected {other:#x}"),
        }
    }
    esme.send(&Writer::new(id::ENQUIRE_LINK, 0, 500).finish())
        .await;
    loop {
        let pdu = esme.next().await.unwrap();
        let h = Header::read(&pdu).unwrap();
        if h.id == id::DELIVER_SM {
            receipts += 1;
            esme.ack(h.sequence).await;
            continue;
        }
        assert_eq!((h.id, h.sequence), (id::resp(id::ENQUIRE_LINK), 500));
        break;
    }
    // The receipts (one second after their submits) reach the client.
    while receipts < 100 {
        let pdu = esme.next().await.unwrap();
        let h = Header::read(&pdu).unwrap();
        assert_eq!(h.id, id::DELIVER_SM);
        let m = Message::read(h.id, &pdu[16..]).unwrap();
        assert!(m.is_receipt());
        receipts += 1;
        esme.ack(h.sequence).await;
    }
    esme.send(&Writer::new(id::UNBIND, 0, 600).finish()).await;
    let h = esme.header().await;
    assert_eq!(h.id, id::resp(id::UNBIND));
    assert!(esme.next().await.is_none(), "closed after unbind");
    assert_eq!(relay.smsc().submits.load(Ordering::SeqCst), 100);
    assert_eq!(relay.smsc().delivery_acks.load(Ordering::SeqCst), 100);
    let metrics = get(&client(), &format!("{}/metrics", relay.admin)).await.1;
    for line in [
        "relaylog_smpp_binds_total{listener=\"smpp\",kind=\"transceiver\",result=\"ok\"} 1",
        "relaylog_smpp_pdus_total{listener=\"smpp\",from=\"client\",command=\"submit_sm\"} 100",
        "relaylog_smpp_pdus_total{listener=\"smpp\",from=\"upstream\",command=\"deliver_sm\"} 100",
        "relaylog_smpp_receipts_total{listener=\"smpp\",result=\"matched\"} 100",
        "relaylog_smpp_receipts_total{listener=\"smpp\",result=\"unmatched\"} 0",
        "relaylog_smpp_window{listener=\"smpp\"} 0",
    ] {
        assert_metric(&metrics, line);
    }

    relay.running.settle().await.unwrap();
    let found = query_store(&relay.config, IndexKind::Recipient, "+31610000042");
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(
        (f.protocol.as_str(), f.fields.account.as_str()),
        ("smpp", "shop")
    );
    let originator = f.fields.originator.as_ref().unwrap();
    assert_eq!(
        (originator.form, originator.value.as_str()),
        (Form::Alphanumeric, "ACME")
    );
    let smpp = f.fields.smpp.expect("SMPP details");
    assert_eq!(
        (smpp.direction, smpp.registered_delivery, smpp.part),
        (Direction::MobileTerminated, 1, None)
    );
    let o = f.outcome.as_ref().expect("an outcome");
    assert_eq!(o.outcome, Outcome::Accepted);
    assert_eq!(o.gateway_code, Some(0));
    assert_eq!(o.upstream_message_id.as_deref(), Some(ids[&52].as_str()));
    // Its receipt, attached by the message id; its text: never kept.
    let r = f.receipt.as_ref().expect("the receipt");
    assert_eq!(
        (r.state.as_deref(), r.error.as_deref()),
        (Some("DELIVRD"), Some("000"))
    );
    assert!(r.done.as_deref().is_some_and(|d| d.len() == 10), "{r:?}");
    assert_eq!(
        query_store(&relay.config, IndexKind::Account, "shop").len(),
        100
    );
    relay.running.shutdown().await;
    for f in files_under(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for canary in [&b"canary-text-55e1"[..], b"secret"] {
            assert!(
                !contains(&bytes, canary),
                "{} in {}",
                String::from_utf8_lossy(canary),
                f.display()
            );
        }
    }
}

/// What relaylog answers itself: an unknown command (generic_nack), a second bind,
/// a malformed submit (its status, nothing recorded or forwarded), a bad length
/// (generic_nack and close).
#[tokio::test]
async fn bad_input_is_answered_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = SmppRelay::start(dir.path(), "", "").await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    esme.send(&Writer::new(0x0000_0042, 0, 7).finish()).await;
    let h = esme.header().await;
    assert_eq!(
        (h.id, h.status, h.sequence),
        (id::GENERIC_NACK, status::INVALID_CMD_ID, 7)
    );
    assert_eq!(
        esme.bind(b"shop", b"secret").await.status,
        status::ALREADY_BOUND
    );
    let mut w = Writer::new(id::SUBMIT_MULTI, 0, 8);
    w.cstr(b"").u8(1).u8(1).cstr(b"3161").u8(0);
    esme.send(&w.finish()).await;
    let h = esme.header().await;
    assert_eq!(
        (h.id, h.status),
        (id::resp(id::SUBMIT_MULTI), status::INVALID_NUM_DESTS)
    );
    // Two messages under one sequence number: the second is refused, so that the
    // response finds its message.
    let mut two = submit(b"31611111111", 20);
    two.extend_from_slice(&submit(b"31622222222", 20));
    esme.send(&two).await;
    let mut statuses = vec![esme.header().await.status, esme.header().await.status];
    statuses.sort();
    assert_eq!(statuses, [status::OK, status::SYSTEM_ERROR]);
    // What only an SMSC sends is not taken from a client; query_sm passes.
    let deliver = Message::read(id::SUBMIT_SM, &submit(b"31633333333", 21)[16..])
        .unwrap()
        .write(id::DELIVER_SM, 21);
    esme.send(&deliver).await;
    let h = esme.header().await;
    assert_eq!(
        (h.id, h.status, h.sequence),
        (id::resp(id::DELIVER_SM), status::INVALID_BIND_STATUS, 21)
    );
    let mut q = Writer::new(id::QUERY_SM, 0, 22);
    q.cstr(b"00000001").u8(0).u8(0).cstr(b"ACME");
    esme.send(&q.finish()).await;
    let h = esme.header().await;
    assert_eq!(
        (h.id, h.sequence),
        (id::resp(id::QUERY_SM), 22),
        "passed to the SMSC and answered"
    );
    // A request under a number still awaited from the SMSC refuses a message under
    // it: its answer (say, a generic_nack) could otherwise settle the message.
    let mut q = Writer::new(id::QUERY_SM, 0, 30);
    q.cstr(b"00000001").u8(0).u8(0).cstr(b"ACME");
    let mut both = q.finish();
    both.extend_from_slice(&submit(b"31644444444", 30));
    esme.send(&both).await;
    let mut got = [esme.header().await, esme.header().await];
    got.sort_by_key(|h| h.id);
    assert_eq!(
        (got[0].id, got[1].id, got[1].status),
        (
            id::resp(id::QUERY_SM),
            id::SUBMIT_SM_RESP,
            status::SYSTEM_ERROR
        )
    );
    esme.send(&[0, 0, 0, 9, 0, 0, 0, 4, 0]).await;
    let h = esme.header().await;
    assert_eq!(
        (h.id, h.status),
        (id::GENERIC_NACK, status::INVALID_CMD_LENGTH)
    );
    assert!(esme.next().await.is_none(), "closed");
    assert_eq!(relay.smsc().submits.load(Ordering::SeqCst), 1);
    relay.running.shutdown().await;
}

/// The store cannot take the records: the client hears ESME_RTHROTTLED and nothing
/// goes upstream.
#[tokio::test]
async fn when_records_cannot_be_committed_the_submit_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    // Room for batches of two (queue-capacity / 8): the four go as two batches.
    let store = "queue-capacity = 16\nenqueue-timeout = \"100ms\"\n";
    let relay = SmppRelay::start(dir.path(), "", store).await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    esme.send(&submit(b"31612345678", 2)).await;
    assert_eq!(esme.header().await.status, status::OK);
    relay.running.settle().await.unwrap();
    let lock = hold_writer(dir.path());
    if on_postgres() {
        // No journal: the next submit waits for its commit and, past its time, is
        // throttled, nothing sent on; once the lock is gone submits go through again.
        esme.send(&submit(b"31687654321", 3)).await;
        assert_eq!(submit_status(&mut esme).await, status::THROTTLED);
        assert_eq!(relay.smsc().submits.load(Ordering::SeqCst), 1);
        lock.release();
        esme.send(&submit(b"31687654321", 4)).await;
        assert_eq!(submit_status(&mut esme).await, status::OK);
        assert_eq!(relay.smsc().submits.load(Ordering::SeqCst), 2);
        relay.running.shutdown().await;
        return;
    }
    // The journal takes the next submit; the writer is stuck on it.
    esme.send(&submit(b"31687654321", 3)).await;
    loop {
        let h = esme.header().await;
        if h.id == id::DELIVER_SM {
            esme.ack(h.sequence).await;
            continue;
        }
        assert_eq!((h.id, h.status), (id::SUBMIT_SM_RESP, status::OK));
        break;
    }
    writer_stuck(&relay.admin).await;
    let mut window = Vec::new();
    for n in 0..4u32 {
        window.extend_from_slice(&submit(b"31687654321", 10 + n));
    }
    esme.send(&window).await;
    let mut statuses = Vec::new();
    let mut lock = Some(lock);
    while statuses.len() < 4 {
        let h = esme.header().await;
        if h.id == id::DELIVER_SM {
            // The first submit's receipt.
            esme.ack(h.sequence).await;
            continue;
        }
        assert_eq!(h.id, id::SUBMIT_SM_RESP);
        statuses.push(h.status);
        if h.status == status::THROTTLED
            && let Some(lock) = lock.take()
        {
            // The rest go through once the writer resumes.
            lock.release();
        }
    }
    let throttled = statuses.iter().filter(|&&s| s == status::THROTTLED).count();
    assert!(throttled >= 1, "{statuses:?}");
    // Only what was recorded reached the SMSC.
    let ok = statuses.iter().filter(|&&s| s == status::OK).count();
    assert_eq!(relay.smsc().submits.load(Ordering::SeqCst), 2 + ok as u64);
    relay.running.shutdown().await;
}

/// The status of the next submit_sm_resp (receipts on the way acknowledged).
async fn submit_status(esme: &mut Esme) -> u32 {
    loop {
        let h = esme.header().await;
        if h.id == id::DELIVER_SM {
            esme.ack(h.sequence).await;
            continue;
        }
        assert_eq!(h.id, id::SUBMIT_SM_RESP);
        return h.status;
    }
}

/// A fake SMSC for one session: binds anyone; then, for submits, either never
/// answers (`hang_up_after: None`) or closes the connection after that many.
async fn fake_smsc(hang_up_after: Option<usize>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let mut submits = 0;
        loop {
            while let Ok(Some(len)) = frame_len(&buf, 1 << 20) {
                let pdu = buf.split_to(len);
                let h = Header::read(&pdu).unwrap();
                match h.id {
                    id::BIND_TRANSCEIVER => {
                        let resp = Writer::new(id::resp(h.id), 0, h.sequence)
                            .cstr(b"fake")
                            .finish();
                        tcp.write_all(&resp).await.unwrap();
                    }
                    id::SUBMIT_SM => {
                        submits += 1;
                        if Some(submits) == hang_up_after {
                            return;
                        }
                    }
                    _ => {}
                }
            }
            if tcp.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    port
}

/// An SMSC that goes away mid-window: the client is unbound, and what was with the
/// SMSC is recorded `failed`. One that never answers: after upstream-timeout the
/// message is `failed` and its place in the window free.
#[tokio::test]
async fn an_smsc_that_goes_away_or_never_answers_leaves_failed_outcomes() {
    for hang_up_after in [Some(3), None] {
        let dir = tempfile::tempdir().unwrap();
        let port = fake_smsc(hang_up_after).await;
        let relay = SmppRelay::start(
            dir.path(),
            &format!("upstream = \"smpp://127.0.0.1:{port}\"\nupstream-timeout = \"1s\"\n"),
            "",
        )
        .await;
        let mut esme = Esme::connect(relay.addr).await;
        assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
        let mut window = Vec::new();
        for n in 0..3u32 {
            window.extend_from_slice(&submit(format!("3162000000{n}").as_bytes(), 10 + n));
        }
        esme.send(&window).await;
        if hang_up_after.is_some() {
            let h = esme.header().await;
            assert_eq!(h.id, id::UNBIND, "the client is unbound");
        }
        let deadline = std::time::Instant::now() + T;
        loop {
            relay.running.settle().await.unwrap();
            let outcomes: Vec<_> = (0..3)
                .filter_map(|n| {
                    query_store(
                        &relay.config,
                        IndexKind::Recipient,
                        &format!("+3162000000{n}"),
                    )
                    .first()
                    .and_then(|f| f.outcome.clone())
                })
                .collect();
            if outcomes.len() == 3 {
                assert!(
                    outcomes.iter().all(|o| o.outcome == Outcome::Failed),
                    "{outcomes:?}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "outcomes: {outcomes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        relay.running.shutdown().await;
    }
}

/// `max-sessions-per-account`: a second session of a bound account is refused
/// (`ESME_RBINDFAIL`); a bind the SMSC refuses (a wrong password) holds no place.
#[tokio::test]
async fn sessions_per_account_are_capped_once_bound() {
    let dir = tempfile::tempdir().unwrap();
    let relay = SmppRelay::start(dir.path(), "max-sessions-per-account = 1\n", "").await;
    let mut wrong = Esme::connect(relay.addr).await;
    assert_eq!(
        wrong.bind(b"shop", b"wrong").await.status,
        status::INVALID_PASSWORD
    );
    let mut first = Esme::connect(relay.addr).await;
    assert_eq!(first.bind(b"shop", b"secret").await.status, status::OK);
    let mut second = Esme::connect(relay.addr).await;
    assert_eq!(
        second.bind(b"shop", b"secret").await.status,
        status::BIND_FAILED
    );
    let mut other = Esme::connect(relay.addr).await;
    assert_eq!(other.bind(b"other", b"secret").await.status, status::OK);
    relay.running.shutdown().await;
}

/// TLS on both legs: a client over TLS from the first byte to a listener with a
/// certificate, and relaylog to an `smpps://` SMSC checked against `upstream-ca`; an
/// SMSC whose certificate is not trusted refuses the bind (`ESME_RBINDFAIL`).
#[tokio::test]
async fn tls_towards_the_client_and_the_smsc() {
    use relaylog::simulator::smpp::Smsc;
    use tokio::io::AsyncReadExt as _;
    let certs = tempfile::tempdir().unwrap();
    let (ck, listener_keys) = cert_files(certs.path(), "listener");
    let _ = cert_files(certs.path(), "smsc");
    let smsc_crt = certs.path().join("smsc.crt");
    let acceptor = tokio_rustls::TlsAcceptor::from(
        relaylog::ingress::tls::server_config(&smsc_crt, &certs.path().join("smsc.key")).unwrap(),
    );
    let smsc = Smsc::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(60))
        .await
        .unwrap()
        .with_tls(acceptor);
    let port = smsc.local_addr().unwrap().port();
    let stats = smsc.stats.clone();
    let (_keep, shutdown) = relaylog::shutdown::channel();
    tokio::spawn(smsc.run(shutdown));
    for trusted in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let ca = if trusted {
            format!("upstream-ca = \"{}\"\n", smsc_crt.display())
        } else {
            String::new()
        };
        let relay = SmppRelay::start(
            dir.path(),
            &format!("upstream = \"smpps://localhost:{port}\"\n{ca}{listener_keys}"),
            "",
        )
        .await;
        let tcp = TcpStream::connect(relay.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = trusting(&ck).connect(name, tcp).await.unwrap();
        let bind = Bind {
            system_id: b"shop",
            password: b"secret",
            system_type: b"",
            interface_version: 0x34,
            addr_ton: 0,
            addr_npi: 0,
            address_range: b"",
        }
        .write(id::BIND_TRANSCEIVER, 1);
        tls.write_all(&bind).await.unwrap();
        let mut buf = BytesMut::new();
        let pdu = loop {
            if let Ok(Some(len)) = frame_len(&buf, 1 << 20) {
                break buf.split_to(len);
            }
            let n = tokio::time::timeout(T, tls.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before the bind_resp");
        };
        let h = Header::read(&pdu).unwrap();
        let want = if trusted {
            status::OK
        } else {
            status::BIND_FAILED
        };
        assert_eq!(
            (h.id, h.status),
            (id::resp(id::BIND_TRANSCEIVER), want),
            "trusted={trusted}"
        );
        if trusted {
            tls.write_all(&submit(b"31612345678", 2)).await.unwrap();
            let pdu = loop {
                if let Ok(Some(len)) = frame_len(&buf, 1 << 20) {
                    break buf.split_to(len);
                }
                let n = tokio::time::timeout(T, tls.read_buf(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0);
            };
            assert_eq!(Header::read(&pdu).unwrap().status, status::OK);
        }
        relay.running.shutdown().await;
    }
    assert_eq!(stats.submits.load(Ordering::SeqCst), 1);
}

/// A client that never binds is let go after `bind-timeout`; a bound one that goes
/// quiet is unbound after `inactivity-timeout`.
#[tokio::test]
async fn quiet_clients_are_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let relay = SmppRelay::start(
        dir.path(),
        "bind-timeout = \"300ms\"\ninactivity-timeout = \"500ms\"\n",
        "",
    )
    .await;
    let mut never = Esme::connect(relay.addr).await;
    assert!(never.next().await.is_none(), "closed without a bind");
    let mut quiet = Esme::connect(relay.addr).await;
    assert_eq!(quiet.bind(b"shop", b"secret").await.status, status::OK);
    let h = quiet.header().await;
    assert_eq!(h.id, id::UNBIND, "unbound when idle");
    relay.running.shutdown().await;
}
