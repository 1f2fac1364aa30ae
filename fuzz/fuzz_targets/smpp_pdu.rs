//! SMPP 3.4 as relaylog reads it from ESMEs and SMSCs (`relaylog::smpp`): the
//! stream cut into PDUs by command_length, and every body relaylog reads (binds,
//! submit_sm, submit_multi, deliver_sm, data_sm and their responses), with the TLV
//! stream, the segment in a UDH or the SAR parameters, and delivery receipts.
//! Nothing panics, a frame is never longer than the cap or the bytes there, and what
//! a message is recorded with stays within SMPP's field sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaylog::smpp::pdu::{self, Bind, Dest, Header, Message, SubmitResp, id};
use relaylog::smpp::{receipt::receipt, segment};

/// The listeners' default cap on command_length.
const MAX_PDU: u32 = 64 * 1024;
/// Commands whose bodies relaylog reads.
const COMMANDS: [u32; 12] = [
    id::BIND_RECEIVER,
    id::BIND_TRANSMITTER,
    id::BIND_TRANSCEIVER,
    id::SUBMIT_SM,
    id::SUBMIT_MULTI,
    id::DELIVER_SM,
    id::DATA_SM,
    id::SUBMIT_SM_RESP,
    id::DELIVER_SM_RESP,
    id::DATA_SM_RESP,
    id::resp(id::SUBMIT_MULTI),
    id::GENERIC_NACK,
];

fuzz_target!(|data: &[u8]| {
    // As a stream, the way a session reads it.
    let mut rest = data;
    while let Ok(Some(len)) = pdu::frame_len(rest, MAX_PDU) {
        assert!((16..=MAX_PDU as usize).contains(&len) && len <= rest.len());
        let header = Header::read(rest).expect("a whole frame has a header");
        assert_eq!(header.length as usize, len);
        assert!(id::index(header.id) < id::NAMES.len());
        body(header.id, &rest[16..len]);
        rest = &rest[len..];
    }
    // And as the body of each command.
    if let Some((&selector, body_bytes)) = data.split_first() {
        body(COMMANDS[usize::from(selector) % COMMANDS.len()], body_bytes);
    }
});

fn body(command: u32, bytes: &[u8]) {
    match command {
        id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => {
            if let Ok(bind) = Bind::read(bytes) {
                // C-octet strings of at most 16 and 9 octets, the NUL included.
                assert!(bind.system_id.len() < 16 && bind.password.len() < 9);
                let _ = format!("{bind:?}");
            }
        }
        id::SUBMIT_SM | id::SUBMIT_MULTI | id::DELIVER_SM | id::DATA_SM => {
            let esm = Message::esm_class_of(command, bytes);
            let Ok(m) = Message::read(command, bytes) else {
                return;
            };
            // Read alone (to tell a receipt), esm_class is the one the whole body has.
            if command == id::SUBMIT_MULTI {
                assert_eq!(esm, None);
            } else {
                assert_eq!(esm, Some(m.esm_class));
            }
            assert!(m.dests.len() <= usize::from(pdu::MAX_MULTI_DESTS));
            for d in &m.dests {
                match d {
                    Dest::Sme(a) => assert!(a.addr.len() <= 65),
                    Dest::List(name) => assert!(name.len() <= 21),
                }
            }
            // The TLV stream reads to its end, whatever it holds.
            let _ = m.tlvs.iter().count();
            let content = m.content();
            if let Ok(Some(s)) = segment(m.esm_class, content, &m.tlvs) {
                assert!(
                    s.part >= 1 && s.part <= s.total,
                    "segment {} of {}",
                    s.part,
                    s.total
                );
            }
            if m.is_receipt()
                && let Some(r) = receipt(content, &m.tlvs)
            {
                assert!(!r.id.is_empty() && r.id.len() <= 64);
            }
            let _ = format!("{m:?}");
        }
        _ if command & id::RESPONSE != 0 => {
            if let Ok(resp) = SubmitResp::read(command, bytes) {
                assert!(resp.message_id.len() <= 65);
                assert!(resp.unsuccess.len() <= 255);
            }
        }
        _ => {}
    }
}
