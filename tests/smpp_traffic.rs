//! What an SMPP session records beyond one submit_sm: receipts attached to their
//! message (also when one overtakes its submit_sm_resp), mobile-originated messages
//! recorded as inbound before the client sees them, submit_multi with a distribution
//! list and a refused destination, and the part of a concatenated message.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::smpp::*;
use common::*;
use relaylog::canonical::Form;
use relaylog::record::{Direction, Outcome, Part};
use relaylog::simulator::smpp::Smsc;
use relaylog::smpp::{
    Address, Dest, Header, Message, SubmitResp, Tlvs, UDHI, Writer, id, status, tag, tlv_bytes,
};
use relaylog::store::IndexKind;

/// A simulator on its own port; relaylog in front of it.
async fn smsc_and_relay(
    dir: &std::path::Path,
    receipts_first: bool,
    store: &str,
) -> (
    SmppRelay,
    std::sync::Arc<relaylog::simulator::smpp::SmscStats>,
    relaylog::simulator::smpp::MoSender,
    relaylog::shutdown::Trigger,
) {
    let mut smsc = Smsc::bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(50))
        .await
        .unwrap();
    if receipts_first {
        smsc = smsc.receipts_before_responses();
    }
    let port = smsc.local_addr().unwrap().port();
    let (stats, mo) = (smsc.stats.clone(), smsc.mo());
    let (keep, shutdown) = relaylog::shutdown::channel();
    tokio::spawn(smsc.run(shutdown));
    let relay = SmppRelay::start(
        dir,
        &format!("upstream = \"smpp://127.0.0.1:{port}\"\n"),
        store,
    )
    .await;
    (relay, stats, mo, keep)
}

/// Reads PDUs until `want` of `command` came, acknowledging deliver_sm on the way;
/// returns them (deliver_sm ones included when asked for).
async fn collect(esme: &mut Esme, command: u32, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < want {
        let pdu = esme.next().await.expect("a PDU");
        let h = Header::read(&pdu).unwrap();
        if h.id == id::DELIVER_SM {
            esme.ack(h.sequence).await;
        }
        if h.id == command {
            got.push(pdu);
        }
    }
    got
}

/// A receipt the SMSC sends before the submit_sm_resp that tells relaylog its
/// message id waits for it, and is attached once it is known.
#[tokio::test]
async fn a_receipt_that_overtakes_its_response_is_attached() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, stats, _mo, _keep) = smsc_and_relay(dir.path(), true, "").await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    esme.send(&submit(b"31612345678", 2)).await;
    // The receipt first, then the response.
    let first = esme.next().await.unwrap();
    let h = Header::read(&first).unwrap();
    assert_eq!(
        h.id,
        id::DELIVER_SM,
        "the simulator sends the receipt first"
    );
    esme.ack(h.sequence).await;
    let resp = esme.next().await.unwrap();
    let h = Header::read(&resp).unwrap();
    assert_eq!((h.id, h.status), (id::SUBMIT_SM_RESP, status::OK));
    let message_id = String::from_utf8(
        SubmitResp::read(h.id, &resp[16..])
            .unwrap()
            .message_id
            .to_vec(),
    )
    .unwrap();
    relay.running.settle().await.unwrap();
    let found = query_store(&relay.config, IndexKind::Recipient, "+31612345678");
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(
        f.outcome.as_ref().unwrap().upstream_message_id.as_deref(),
        Some(message_id.as_str())
    );
    let r = f.receipt.as_ref().expect("attached once its id was known");
    assert_eq!(r.state.as_deref(), Some("DELIVRD"));
    assert_eq!(stats.receipts_sent.load(Ordering::SeqCst), 1);
    let metrics = get(&client(), &format!("{}/metrics", relay.admin)).await.1;
    assert_metric(
        &metrics,
        "relaylog_smpp_receipts_total{listener=\"smpp\",result=\"matched\"} 1",
    );
    relay.running.shutdown().await;
}

/// A mobile-originated deliver_sm is recorded (inbound: the handset is the
/// originator, the short code the recipient) before the client gets it; the client's
/// answer is its outcome. Its text is kept nowhere.
#[tokio::test]
async fn a_mobile_originated_message_is_recorded_as_inbound() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, stats, mo, _keep) = smsc_and_relay(dir.path(), false, "").await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    assert!(mo.deliver_mo(b"31687654321", b"4411", b"canary-mo-7d1c"));
    let pdu = esme.next().await.unwrap();
    let h = Header::read(&pdu).unwrap();
    assert_eq!(h.id, id::DELIVER_SM);
    let m = Message::read(h.id, &pdu[16..]).unwrap();
    assert_eq!(m.short_message, b"canary-mo-7d1c", "passed unchanged");
    esme.ack(h.sequence).await;
    // The SMSC has the client's answer.
    for _ in 0..100 {
        if stats.delivery_acks.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.delivery_acks.load(Ordering::SeqCst), 1);
    relay.running.settle().await.unwrap();
    let found = query_store(&relay.config, IndexKind::Originator, "+31687654321");
    assert_eq!(found.len(), 1, "found by the handset's number");
    let f = &found[0];
    assert_eq!(f.fields.account, "shop");
    assert_eq!(
        (f.fields.recipient.form, f.fields.recipient.value.as_str()),
        (Form::ShortCode, "4411")
    );
    assert_eq!(
        f.fields.smpp.unwrap().direction,
        Direction::MobileOriginated
    );
    let o = f.outcome.as_ref().expect("the client's answer");
    assert_eq!((o.outcome, o.gateway_code), (Outcome::Accepted, Some(0)));
    assert_eq!(
        query_store(&relay.config, IndexKind::Recipient, "4411").len(),
        1
    );
    // The client's error is the outcome of the next one, and reaches the SMSC.
    assert!(mo.deliver_mo(b"31687654322", b"4411", b"second"));
    let h = esme.header().await;
    esme.answer(h.sequence, 0x64).await;
    for _ in 0..100 {
        if stats.delivery_refusals.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.last_refusal.load(Ordering::SeqCst), 0x64);
    relay.running.settle().await.unwrap();
    let found = query_store(&relay.config, IndexKind::Originator, "+31687654322");
    let o = found[0].outcome.as_ref().unwrap();
    assert_eq!((o.outcome, o.gateway_code), (Outcome::Failed, Some(0x64)));
    relay.running.shutdown().await;
    assert_nowhere(dir.path(), b"canary-mo-7d1c");
}

/// An inbound message that cannot be recorded is not passed to the client: the SMSC
/// hears ESME_RX_T_APPN and will send it again.
#[tokio::test]
async fn an_inbound_message_that_cannot_be_recorded_is_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = "queue-capacity = 2\nenqueue-timeout = \"100ms\"\n";
    let (relay, stats, mo, _keep) = smsc_and_relay(dir.path(), false, store).await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    // One goes through (and makes the partition the lock is taken on).
    assert!(mo.deliver_mo(b"31687654300", b"4411", b"hello"));
    collect(&mut esme, id::DELIVER_SM, 1).await;
    relay.running.settle().await.unwrap();
    let lock = hold_writer(dir.path());
    for n in 0..4u8 {
        assert!(mo.deliver_mo(format!("3168765432{n}").as_bytes(), b"4411", b"hello"));
    }
    // At least one is refused to the SMSC (the writer is held): wait for it.
    let refused = &stats.delivery_refusals;
    for _ in 0..200 {
        if refused.load(Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the SMSC heard a refusal"
    );
    assert_eq!(
        stats.last_refusal.load(Ordering::SeqCst),
        0x64,
        "ESME_RX_T_APPN: send it again later"
    );
    lock.release();
    // The client gets the others, and only them: each deliver_sm it sees is one the
    // SMSC did not hear refused.
    let mut seen = 0;
    for round in 0.. {
        assert!(round < 500, "the deliveries and refusals never added up");
        esme.send(&Writer::new(id::ENQUIRE_LINK, 0, 77).finish())
            .await;
        // The deliveries that came first (any number), then the enquire_link's
        // answer.
        loop {
            let pdu = esme.next().await.unwrap();
            let h = Header::read(&pdu).unwrap();
            if h.id == id::DELIVER_SM {
                seen += 1;
                esme.ack(h.sequence).await;
            } else {
                assert_eq!(h.id, id::resp(id::ENQUIRE_LINK));
                break;
            }
        }
        if seen + refused.load(Ordering::SeqCst) as usize >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen < 4, "a refused one never reaches the client");
    relay.running.shutdown().await;
}

/// submit_multi to a number, a refused number and a distribution list: one record
/// each, the list marked as such; the refused one's outcome is its unsuccess_sme
/// status; the receipt from the delivered number goes to its record alone.
#[tokio::test]
async fn submit_multi_outcomes_and_receipts_are_per_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _stats, _mo, _keep) = smsc_and_relay(dir.path(), false, "").await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    let number = |addr: &'static [u8]| {
        Dest::Sme(Address {
            ton: 1,
            npi: 1,
            addr,
        })
    };
    let multi = Message {
        service_type: b"",
        source: Address {
            ton: 3,
            npi: 0,
            addr: b"4411",
        },
        dests: vec![
            number(b"31611111111"),
            number(b"99912345"),
            Dest::List(b"friends"),
        ],
        esm_class: 0,
        registered_delivery: 1,
        data_coding: 0,
        short_message: b"hello all",
        tlvs: Tlvs::none(),
    }
    .write(id::SUBMIT_MULTI, 5);
    esme.send(&multi).await;
    let resp = collect(&mut esme, id::resp(id::SUBMIT_MULTI), 1)
        .await
        .remove(0);
    let r = SubmitResp::read(id::resp(id::SUBMIT_MULTI), &resp[16..]).unwrap();
    assert_eq!(r.unsuccess.len(), 1);
    // The receipt of the one delivered.
    collect(&mut esme, id::DELIVER_SM, 1).await;
    relay.running.settle().await.unwrap();
    let delivered = query_store(&relay.config, IndexKind::Recipient, "+31611111111");
    let refused = query_store(&relay.config, IndexKind::Recipient, "+99912345");
    let list = query_store(&relay.config, IndexKind::Recipient, "friends");
    assert_eq!((delivered.len(), refused.len(), list.len()), (1, 1, 1));
    assert_eq!(delivered[0].submission, refused[0].submission);
    assert_eq!(list[0].fields.recipient.form, Form::List);
    assert_eq!(
        delivered[0].fields.originator.as_ref().unwrap().form,
        Form::ShortCode
    );
    let outcome = |f: &relaylog::store::query::Found| {
        let o = f.outcome.as_ref().unwrap();
        (o.outcome, o.gateway_code)
    };
    assert_eq!(outcome(&delivered[0]), (Outcome::Accepted, Some(0)));
    assert_eq!(
        outcome(&refused[0]),
        (Outcome::Rejected, Some(status::INVALID_DEST_ADDR as i32))
    );
    assert_eq!(outcome(&list[0]), (Outcome::Accepted, Some(0)));
    assert_eq!(
        delivered[0]
            .receipt
            .as_ref()
            .and_then(|r| r.state.as_deref()),
        Some("DELIVRD")
    );
    assert!(
        refused[0].receipt.is_none(),
        "the receipt is one destination's"
    );
    relay.running.shutdown().await;
}

/// Each part of a concatenated message is recorded with its reference and number,
/// from a UDH (8-bit reference) or from sar_* TLVs (16-bit).
#[tokio::test]
async fn the_parts_of_a_long_message_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = SmppRelay::start(dir.path(), "", "").await;
    let mut esme = Esme::connect(relay.addr).await;
    assert_eq!(esme.bind(b"shop", b"secret").await.status, status::OK);
    let to = Address {
        ton: 1,
        npi: 1,
        addr: b"31612345678",
    };
    let source = Address {
        ton: 5,
        npi: 0,
        addr: b"ACME",
    };
    let mut udh = vec![0x05, 0x00, 0x03, 0x2A, 0x03, 0x02];
    udh.extend_from_slice(b"second part");
    let sar = tlv_bytes(&[
        (tag::SAR_MSG_REF_NUM, &0x1234u16.to_be_bytes()),
        (tag::SAR_TOTAL_SEGMENTS, &[2]),
        (tag::SAR_SEGMENT_SEQNUM, &[1]),
    ]);
    let parts = [
        Message {
            service_type: b"",
            source,
            dests: vec![Dest::Sme(to)],
            esm_class: UDHI,
            registered_delivery: 0,
            data_coding: 0,
            short_message: &udh,
            tlvs: Tlvs::none(),
        }
        .write(id::SUBMIT_SM, 2),
        Message {
            service_type: b"",
            source,
            dests: vec![Dest::Sme(to)],
            esm_class: 0,
            registered_delivery: 0,
            data_coding: 0,
            short_message: b"first part",
            tlvs: Tlvs::raw(&sar),
        }
        .write(id::SUBMIT_SM, 3),
    ];
    esme.send(&parts.concat()).await;
    collect(&mut esme, id::SUBMIT_SM_RESP, 2).await;
    relay.running.settle().await.unwrap();
    let mut found = query_store(&relay.config, IndexKind::Recipient, "+31612345678");
    found.sort_by_key(|f| f.segments);
    let parts: Vec<_> = found
        .iter()
        .map(|f| (f.segments, f.fields.smpp.unwrap().part))
        .collect();
    assert_eq!(
        parts,
        [
            (
                2,
                Some(Part {
                    reference: 0x1234,
                    number: 1
                })
            ),
            (
                3,
                Some(Part {
                    reference: 0x2A,
                    number: 2
                })
            ),
        ]
    );
    relay.running.shutdown().await;
}
