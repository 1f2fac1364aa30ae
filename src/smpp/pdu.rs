//! SMPP 3.4 PDUs as relaylog reads them: the header, framing with a length cap, and
//! the bodies of the PDUs whose metadata is recorded, borrowed from the frame (no
//! copy on the relay path). Writing is for the simulator, the load generator and
//! tests; the relay passes PDUs on byte for byte.

/// Header length: command_length, command_id, command_status, sequence_number.
pub const HEADER_LEN: usize = 16;

/// Command ids (SMPP 3.4 §5.1.2.1). A response is its request's id with bit 31 set.
pub mod id {
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    pub const QUERY_SM: u32 = 0x0000_0003;
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    pub const DELIVER_SM: u32 = 0x0000_0005;
    pub const UNBIND: u32 = 0x0000_0006;
    pub const REPLACE_SM: u32 = 0x0000_0007;
    pub const CANCEL_SM: u32 = 0x0000_0008;
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    pub const OUTBIND: u32 = 0x0000_000B;
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    pub const SUBMIT_MULTI: u32 = 0x0000_0021;
    pub const ALERT_NOTIFICATION: u32 = 0x0000_0102;
    pub const DATA_SM: u32 = 0x0000_0103;
    pub const SUBMIT_SM_RESP: u32 = 0x8000_0004;
    pub const DELIVER_SM_RESP: u32 = 0x8000_0005;
    pub const DATA_SM_RESP: u32 = 0x8000_0103;
    /// Bit 31: a response.
    pub const RESPONSE: u32 = 0x8000_0000;

    /// The response id of a request id.
    pub const fn resp(request: u32) -> u32 {
        request | RESPONSE
    }

    /// The names commands are counted under, in [`index`] order.
    pub const NAMES: [&str; 17] = [
        "generic_nack",
        "bind_receiver",
        "bind_transmitter",
        "bind_transceiver",
        "query_sm",
        "submit_sm",
        "deliver_sm",
        "unbind",
        "replace_sm",
        "cancel_sm",
        "outbind",
        "enquire_link",
        "submit_multi",
        "alert_notification",
        "data_sm",
        "response",
        "other",
    ];

    /// The command's place in [`NAMES`]: every response is `response`, an id SMPP 3.4
    /// does not define `other`.
    pub fn index(id: u32) -> usize {
        match id {
            GENERIC_NACK => 0,
            BIND_RECEIVER => 1,
            BIND_TRANSMITTER => 2,
            BIND_TRANSCEIVER => 3,
            QUERY_SM => 4,
            SUBMIT_SM => 5,
            DELIVER_SM => 6,
            UNBIND => 7,
            REPLACE_SM => 8,
            CANCEL_SM => 9,
            OUTBIND => 10,
            ENQUIRE_LINK => 11,
            SUBMIT_MULTI => 12,
            ALERT_NOTIFICATION => 13,
            DATA_SM => 14,
            x if x & RESPONSE != 0 && known(x) => 15,
            _ => 16,
        }
    }

    /// Is this a command id SMPP 3.4 defines (a request or its response)?
    pub fn known(id: u32) -> bool {
        matches!(
            id & !RESPONSE,
            BIND_RECEIVER
                | BIND_TRANSMITTER
                | QUERY_SM
                | SUBMIT_SM
                | DELIVER_SM
                | UNBIND
                | REPLACE_SM
                | CANCEL_SM
                | BIND_TRANSCEIVER
                | ENQUIRE_LINK
                | SUBMIT_MULTI
                | DATA_SM
        ) || id == GENERIC_NACK
            || id == OUTBIND
            || id == ALERT_NOTIFICATION
    }
}

/// Command statuses a proxy gives or reads (SMPP 3.4 §5.1.3).
pub mod status {
    pub const OK: u32 = 0x00;
    pub const INVALID_MSG_LENGTH: u32 = 0x01;
    pub const INVALID_CMD_LENGTH: u32 = 0x02;
    pub const INVALID_CMD_ID: u32 = 0x03;
    pub const INVALID_BIND_STATUS: u32 = 0x04;
    pub const ALREADY_BOUND: u32 = 0x05;
    pub const SYSTEM_ERROR: u32 = 0x08;
    pub const INVALID_SOURCE_ADDR: u32 = 0x0A;
    pub const INVALID_DEST_ADDR: u32 = 0x0B;
    pub const BIND_FAILED: u32 = 0x0D;
    pub const INVALID_PASSWORD: u32 = 0x0E;
    pub const INVALID_SYSTEM_ID: u32 = 0x0F;
    pub const INVALID_SERVICE_TYPE: u32 = 0x15;
    pub const INVALID_NUM_DESTS: u32 = 0x33;
    pub const INVALID_DL_NAME: u32 = 0x34;
    pub const INVALID_DEST_FLAG: u32 = 0x40;
    pub const INVALID_ESM_CLASS: u32 = 0x43;
    pub const INVALID_SYSTEM_TYPE: u32 = 0x53;
    /// The client retries later: what relaylog answers when it cannot record.
    pub const THROTTLED: u32 = 0x58;
    pub const INVALID_SCHEDULE: u32 = 0x61;
    pub const INVALID_EXPIRY: u32 = 0x62;
    /// ESME_RX_T_APPN: an ESME cannot take a deliver_sm now (the SMSC sends it again).
    pub const TEMPORARY_APP_ERROR: u32 = 0x64;
    pub const MESSAGE_QUEUE_FULL: u32 = 0x14;
    pub const INVALID_OPT_PARAM_STREAM: u32 = 0xC0;
    pub const INVALID_PARAM_LENGTH: u32 = 0xC2;
}

/// Optional parameter (TLV) tags relaylog reads.
pub mod tag {
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    pub const MESSAGE_STATE: u16 = 0x0427;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub id: u32,
    pub status: u32,
    pub sequence: u32,
}

impl Header {
    /// The header at the start of `buf`, if 16 bytes are there.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        (buf.len() >= HEADER_LEN).then(|| Header {
            length: word(0),
            id: word(4),
            status: word(8),
            sequence: word(12),
        })
    }

    pub fn is_response(&self) -> bool {
        self.id & id::RESPONSE != 0
    }
}

/// Why a stream cannot be read as PDUs any more: its peer gets a generic_nack
/// (`ESME_RINVCMDLEN`) and the session closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("command_length {0} is below the 16-byte header")]
    TooShort(u32),
    #[error("command_length {0} is over the listener's cap")]
    TooLong(u32),
}

/// The length of the next PDU in `buf`, once all of it is there: `Ok(None)` while
/// more bytes are needed. `max` caps command_length (and so what is buffered).
pub fn frame_len(buf: &[u8], max: u32) -> Result<Option<usize>, FrameError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if len < HEADER_LEN as u32 {
        return Err(FrameError::TooShort(len));
    }
    if len > max {
        return Err(FrameError::TooLong(len));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

/// A body that does not read as its command: the response's status says which field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed PDU body (status {status:#04x})")]
pub struct BodyError {
    pub status: u32,
}

fn bad(status: u32) -> BodyError {
    BodyError { status }
}

/// Reads a body field by field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self, status: u32) -> Result<u8, BodyError> {
        let (&b, rest) = self.0.split_first().ok_or(bad(status))?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize, status: u32) -> Result<&'a [u8], BodyError> {
        if self.0.len() < n {
            return Err(bad(status));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A C-octet string of at most `max` bytes with its NUL; the bytes without it.
    fn cstr(&mut self, max: usize, status: u32) -> Result<&'a [u8], BodyError> {
        let end = self
            .0
            .iter()
            .take(max)
            .position(|&b| b == 0)
            .ok_or(bad(status))?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// A type-of-number, numbering-plan and address triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    pub ton: u8,
    pub npi: u8,
    pub addr: &'a [u8],
}

impl<'a> Address<'a> {
    fn read(r: &mut Reader<'a>, max: usize, status: u32) -> Result<Self, BodyError> {
        Ok(Address {
            ton: r.u8(status)?,
            npi: r.u8(status)?,
            addr: r.cstr(max, status)?,
        })
    }
}

/// bind_transmitter, bind_receiver, bind_transceiver (and outbind's first fields).
/// The password is here only to be passed on: never logged, kept or counted.
#[derive(Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub system_id: &'a [u8],
    pub password: &'a [u8],
    pub system_type: &'a [u8],
    pub interface_version: u8,
    pub addr_ton: u8,
    pub addr_npi: u8,
    pub address_range: &'a [u8],
}

impl std::fmt::Debug for Bind<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bind")
            .field("system_id", &String::from_utf8_lossy(self.system_id))
            .field("password", &"<hidden>")
            .field("interface_version", &self.interface_version)
            .finish_non_exhaustive()
    }
}

impl<'a> Bind<'a> {
    pub fn read(body: &'a [u8]) -> Result<Self, BodyError> {
        let mut r = Reader(body);
        let bind = Bind {
            system_id: r.cstr(16, status::INVALID_SYSTEM_ID)?,
            password: r.cstr(9, status::INVALID_PASSWORD)?,
            system_type: r.cstr(13, status::INVALID_SYSTEM_TYPE)?,
            interface_version: r.u8(status::INVALID_CMD_LENGTH)?,
            addr_ton: r.u8(status::INVALID_CMD_LENGTH)?,
            addr_npi: r.u8(status::INVALID_CMD_LENGTH)?,
            address_range: r.cstr(41, status::INVALID_CMD_LENGTH)?,
        };
        if !r.rest().is_empty() {
            // Bind PDUs have no optional parameters in SMPP 3.4.
            return Err(bad(status::INVALID_CMD_LENGTH));
        }
        Ok(bind)
    }
}

/// Where a submit_multi goes: an SME address, or a distribution list by name
/// (which the SMSC expands: relaylog records the name, marked as a list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    Sme(Address<'a>),
    List(&'a [u8]),
}

/// The optional parameters after a body's mandatory fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlvs<'a>(&'a [u8]);

impl<'a> Tlvs<'a> {
    /// Checks the stream: every TLV whole (`ESME_RINVOPTPARSTREAM` if not).
    fn read(bytes: &'a [u8]) -> Result<Self, BodyError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(bad(status::INVALID_OPT_PARAM_STREAM));
            }
            let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
            if rest.len() < 4 + len {
                return Err(bad(status::INVALID_OPT_PARAM_STREAM));
            }
            rest = &rest[4 + len..];
        }
        Ok(Tlvs(bytes))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, &'a [u8])> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            // Checked whole in `read`.
            let head = rest.get(..4)?;
            let tag = u16::from_be_bytes([head[0], head[1]]);
            let len = u16::from_be_bytes([head[2], head[3]]) as usize;
            let value = rest.get(4..4 + len)?;
            rest = &rest[4 + len..];
            Some((tag, value))
        })
    }

    /// The first value of `tag`.
    pub fn get(&self, tag: u16) -> Option<&'a [u8]> {
        self.iter().find(|(t, _)| *t == tag).map(|(_, v)| v)
    }
}

/// The message PDUs relaylog records: submit_sm, deliver_sm (same layout),
/// submit_multi (a destination list) and data_sm (no scheduling fields, longer
/// addresses, content in a TLV). Content is here only to be passed on and, for a
/// receipt, to find its fields: never logged or kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub service_type: &'a [u8],
    pub source: Address<'a>,
    pub dests: Vec<Dest<'a>>,
    pub esm_class: u8,
    pub registered_delivery: u8,
    pub data_coding: u8,
    pub short_message: &'a [u8],
    pub tlvs: Tlvs<'a>,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("dests", &self.dests.len())
            .field("esm_class", &self.esm_class)
            .field("registered_delivery", &self.registered_delivery)
            .finish_non_exhaustive()
    }
}

/// The most destinations a submit_multi may list (SMPP 3.4 §4.5.1).
pub const MAX_MULTI_DESTS: u8 = 254;

impl<'a> Message<'a> {
    /// The body of a submit_sm, deliver_sm, submit_multi or data_sm (`command`).
    pub fn read(command: u32, body: &'a [u8]) -> Result<Self, BodyError> {
        let mut r = Reader(body);
        let service_type = r.cstr(6, status::INVALID_SERVICE_TYPE)?;
        let data_sm = command == id::DATA_SM;
        let addr_max = if data_sm { 65 } else { 21 };
        let source = Address::read(&mut r, addr_max, status::INVALID_SOURCE_ADDR)?;
        let dests = match command {
            id::SUBMIT_MULTI => {
                let n = r.u8(status::INVALID_NUM_DESTS)?;
                if n == 0 || n > MAX_MULTI_DESTS {
                    return Err(bad(status::INVALID_NUM_DESTS));
                }
                let mut dests = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    dests.push(match r.u8(status::INVALID_DEST_FLAG)? {
                        1 => Dest::Sme(Address::read(&mut r, 21, status::INVALID_DEST_ADDR)?),
                        2 => Dest::List(r.cstr(21, status::INVALID_DL_NAME)?),
                        _ => return Err(bad(status::INVALID_DEST_FLAG)),
                    });
                }
                dests
            }
            _ => vec![Dest::Sme(Address::read(
                &mut r,
                addr_max,
                status::INVALID_DEST_ADDR,
            )?)],
        };
        let esm_class = r.u8(status::INVALID_ESM_CLASS)?;
        if data_sm {
            let registered_delivery = r.u8(status::INVALID_CMD_LENGTH)?;
            let data_coding = r.u8(status::INVALID_CMD_LENGTH)?;
            let tlvs = Tlvs::read(r.rest())?;
            return Ok(Message {
                service_type,
                source,
                dests,
                esm_class,
                registered_delivery,
                data_coding,
                short_message: &[],
                tlvs,
            });
        }
        let _protocol_id = r.u8(status::INVALID_CMD_LENGTH)?;
        let _priority_flag = r.u8(status::INVALID_CMD_LENGTH)?;
        let _schedule = r.cstr(17, status::INVALID_SCHEDULE)?;
        let _validity = r.cstr(17, status::INVALID_EXPIRY)?;
        let registered_delivery = r.u8(status::INVALID_CMD_LENGTH)?;
        let _replace_if_present = r.u8(status::INVALID_CMD_LENGTH)?;
        let data_coding = r.u8(status::INVALID_CMD_LENGTH)?;
        let _sm_default_msg_id = r.u8(status::INVALID_CMD_LENGTH)?;
        let sm_length = r.u8(status::INVALID_MSG_LENGTH)?;
        let short_message = r.take(sm_length as usize, status::INVALID_MSG_LENGTH)?;
        let tlvs = Tlvs::read(r.rest())?;
        Ok(Message {
            service_type,
            source,
            dests,
            esm_class,
            registered_delivery,
            data_coding,
            short_message,
            tlvs,
        })
    }

    /// The esm_class of a submit_sm, deliver_sm or data_sm body, read without the
    /// rest of it (what a proxy needs to tell a receipt from a message); `None` for
    /// any other command (submit_multi's destinations come before its esm_class).
    pub fn esm_class_of(command: u32, body: &[u8]) -> Option<u8> {
        let addr_max = match command {
            id::SUBMIT_SM | id::DELIVER_SM => 21,
            id::DATA_SM => 65,
            _ => return None,
        };
        let mut r = Reader(body);
        r.cstr(6, 0).ok()?;
        for _ in 0..2 {
            Address::read(&mut r, addr_max, 0).ok()?;
        }
        r.u8(0).ok()
    }

    /// The content: short_message, or the message_payload TLV when that is used.
    pub fn content(&self) -> &'a [u8] {
        match self.tlvs.get(tag::MESSAGE_PAYLOAD) {
            Some(payload) if self.short_message.is_empty() => payload,
            _ => self.short_message,
        }
    }

    /// See [`is_receipt`].
    pub fn is_receipt(&self) -> bool {
        is_receipt(self.esm_class)
    }
}

/// esm_class (bits 2–5, the message type) marks an SMSC delivery receipt (0x04) or
/// an intermediate delivery notification (0x20): facts about an earlier message,
/// not a message of its own.
pub fn is_receipt(esm_class: u8) -> bool {
    matches!(esm_class & 0x3C, 0x04 | 0x20)
}

/// A response's message_id: submit_sm_resp, data_sm_resp, submit_multi_resp (with the
/// destinations the SMSC refused, each with its error status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitResp<'a> {
    pub message_id: &'a [u8],
    pub unsuccess: Vec<(Address<'a>, u32)>,
}

impl<'a> SubmitResp<'a> {
    /// The body of a submit response (`command` is the response id). An error
    /// response may have no body at all.
    pub fn read(command: u32, body: &'a [u8]) -> Result<Self, BodyError> {
        if body.is_empty() {
            return Ok(SubmitResp {
                message_id: &[],
                unsuccess: Vec::new(),
            });
        }
        let mut r = Reader(body);
        let message_id = r.cstr(65, status::INVALID_CMD_LENGTH)?;
        let mut unsuccess = Vec::new();
        if command == id::resp(id::SUBMIT_MULTI) && !r.0.is_empty() {
            let n = r.u8(status::INVALID_CMD_LENGTH)?;
            for _ in 0..n {
                let addr = Address::read(&mut r, 21, status::INVALID_CMD_LENGTH)?;
                let err = r.take(4, status::INVALID_CMD_LENGTH)?;
                unsuccess.push((addr, u32::from_be_bytes([err[0], err[1], err[2], err[3]])));
            }
        }
        Ok(SubmitResp {
            message_id,
            unsuccess,
        })
    }
}

/// Writes PDUs: the simulator's, the load generator's and the tests'.
#[derive(Debug)]
pub struct Writer(Vec<u8>);

/// Optional parameters, encoded one after another.
pub fn tlv_bytes(pairs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in pairs {
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

impl Writer {
    pub fn new(id: u32, status: u32, sequence: u32) -> Writer {
        let mut w = Writer(Vec::with_capacity(64));
        w.0.extend_from_slice(&[0; 4]);
        w.u32(id).u32(status).u32(sequence);
        w
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A C-octet string: the bytes, then NUL.
    pub fn cstr(&mut self, s: &[u8]) -> &mut Self {
        self.0.extend_from_slice(s);
        self.0.push(0);
        self
    }

    pub fn octets(&mut self, s: &[u8]) -> &mut Self {
        self.0.extend_from_slice(s);
        self
    }

    pub fn address(&mut self, a: Address<'_>) -> &mut Self {
        self.u8(a.ton).u8(a.npi).cstr(a.addr)
    }

    pub fn tlv(&mut self, tag: u16, value: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&tag.to_be_bytes());
        self.0
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.0.extend_from_slice(value);
        self
    }

    /// The PDU, its command_length filled in.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut pdu = std::mem::take(&mut self.0);
        let len = pdu.len() as u32;
        pdu[..4].copy_from_slice(&len.to_be_bytes());
        pdu
    }
}

impl Bind<'_> {
    pub fn write(&self, command: u32, sequence: u32) -> Vec<u8> {
        Writer::new(command, 0, sequence)
            .cstr(self.system_id)
            .cstr(self.password)
            .cstr(self.system_type)
            .u8(self.interface_version)
            .u8(self.addr_ton)
            .u8(self.addr_npi)
            .cstr(self.address_range)
            .finish()
    }
}

impl Message<'_> {
    /// As `command` (submit_sm, deliver_sm, submit_multi, data_sm). The fields this
    /// type does not keep are written as their defaults.
    pub fn write(&self, command: u32, sequence: u32) -> Vec<u8> {
        let mut w = Writer::new(command, 0, sequence);
        w.cstr(self.service_type).address(self.source);
        if command == id::SUBMIT_MULTI {
            w.u8(self.dests.len() as u8);
            for d in &self.dests {
                match d {
                    Dest::Sme(a) => w.u8(1).address(*a),
                    Dest::List(name) => w.u8(2).cstr(name),
                };
            }
        } else if let Some(Dest::Sme(a)) = self.dests.first() {
            w.address(*a);
        }
        w.u8(self.esm_class);
        if command == id::DATA_SM {
            w.u8(self.registered_delivery).u8(self.data_coding);
        } else {
            w.u8(0).u8(0).cstr(b"").cstr(b"");
            w.u8(self.registered_delivery)
                .u8(0)
                .u8(self.data_coding)
                .u8(0);
            w.u8(self.short_message.len() as u8)
                .octets(self.short_message);
        }
        w.octets(self.tlvs.0);
        w.finish()
    }
}

impl<'a> Tlvs<'a> {
    /// TLVs already encoded (for writing).
    pub fn raw(bytes: &'a [u8]) -> Tlvs<'a> {
        Tlvs(bytes)
    }

    pub fn none() -> Tlvs<'static> {
        Tlvs(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_command_is_counted_under_its_name() {
        let name = |command| id::NAMES[id::index(command)];
        assert_eq!(name(id::SUBMIT_SM), "submit_sm");
        assert_eq!(name(id::DATA_SM), "data_sm");
        assert_eq!(name(id::resp(id::SUBMIT_SM)), "response");
        assert_eq!(name(0x42), "other");
        assert_eq!(name(id::resp(0x42)), "other");
        assert_eq!(id::NAMES.len(), id::index(0x42) + 1);
    }

    fn body(pdu: &[u8]) -> (Header, &[u8]) {
        let h = Header::read(pdu).unwrap();
        assert_eq!(h.length as usize, pdu.len());
        (h, &pdu[HEADER_LEN..])
    }

    #[test]
    fn frames_are_cut_at_their_length_and_capped() {
        let pdu = Writer::new(id::ENQUIRE_LINK, 0, 7).finish();
        assert_eq!(pdu.len(), 16);
        assert_eq!(frame_len(&pdu[..3], 1024), Ok(None));
        assert_eq!(frame_len(&pdu[..10], 1024), Ok(None));
        assert_eq!(frame_len(&pdu, 1024), Ok(Some(16)));
        let mut two = pdu.clone();
        two.extend_from_slice(&pdu);
        assert_eq!(frame_len(&two, 1024), Ok(Some(16)));
        assert_eq!(
            frame_len(&[0, 0, 0, 15], 1024),
            Err(FrameError::TooShort(15))
        );
        assert_eq!(
            frame_len(&[0, 0, 4, 1], 1024),
            Err(FrameError::TooLong(1025))
        );
        let h = Header::read(&pdu).unwrap();
        assert_eq!(
            (h.id, h.sequence, h.is_response()),
            (id::ENQUIRE_LINK, 7, false)
        );
        assert!(id::known(id::resp(id::SUBMIT_MULTI)) && !id::known(0x0000_0042));
    }

    #[test]
    fn a_bind_reads_back_and_hides_its_password() {
        let bind = Bind {
            system_id: b"shop",
            password: b"canary9",
            system_type: b"VMA",
            interface_version: 0x34,
            addr_ton: 1,
            addr_npi: 1,
            address_range: b"",
        };
        let pdu = bind.write(id::BIND_TRANSCEIVER, 1);
        let (h, b) = body(&pdu);
        assert_eq!(h.id, id::BIND_TRANSCEIVER);
        assert_eq!(Bind::read(b).unwrap(), bind);
        assert!(!format!("{bind:?}").contains("canary"));
        // A system_id over 15 bytes, a password over 8: their statuses.
        let long = Bind {
            system_id: b"a-system-id-of-16",
            ..bind.clone()
        };
        let pdu = long.write(id::BIND_TRANSMITTER, 2);
        assert_eq!(
            Bind::read(body(&pdu).1),
            Err(bad(status::INVALID_SYSTEM_ID))
        );
        let long = Bind {
            password: b"123456789",
            ..bind
        };
        let pdu = long.write(id::BIND_TRANSMITTER, 2);
        assert_eq!(Bind::read(body(&pdu).1), Err(bad(status::INVALID_PASSWORD)));
    }

    #[test]
    fn each_message_pdu_reads_back() {
        let payload_tlv = tlv_bytes(&[(tag::MESSAGE_PAYLOAD, b"a longer text in a TLV")]);
        let src = Address {
            ton: 5,
            npi: 0,
            addr: b"ACME",
        };
        let one = Address {
            ton: 1,
            npi: 1,
            addr: b"31612345678",
        };
        let cases = [
            (
                id::SUBMIT_SM,
                vec![Dest::Sme(one)],
                &b"hello"[..],
                Tlvs::none(),
            ),
            (
                id::DELIVER_SM,
                vec![Dest::Sme(one)],
                b"id:1 stat:DELIVRD",
                Tlvs::none(),
            ),
            (
                id::SUBMIT_MULTI,
                vec![Dest::Sme(one), Dest::List(b"friends"), Dest::Sme(src)],
                b"hi all",
                Tlvs::none(),
            ),
            (
                id::DATA_SM,
                vec![Dest::Sme(one)],
                b"",
                Tlvs::raw(&payload_tlv),
            ),
        ];
        for (command, dests, text, tlvs) in cases {
            let m = Message {
                service_type: b"",
                source: src,
                dests,
                esm_class: 0x40,
                registered_delivery: 1,
                data_coding: 8,
                short_message: text,
                tlvs,
            };
            let pdu = m.write(command, 3);
            let (h, b) = body(&pdu);
            let back = Message::read(h.id, b).unwrap();
            assert_eq!(back, m, "{command:#x}");
            let esm = Message::esm_class_of(h.id, b);
            if command != id::SUBMIT_MULTI {
                assert_eq!(esm, Some(0x40));
            } else {
                assert_eq!(esm, None);
            }
            assert!(!format!("{back:?}").contains("hello"));
        }
        let data_pdu = Message {
            service_type: b"",
            source: src,
            dests: vec![Dest::Sme(one)],
            esm_class: 0,
            registered_delivery: 0,
            data_coding: 0,
            short_message: b"",
            tlvs: Tlvs::raw(&payload_tlv),
        }
        .write(id::DATA_SM, 1);
        let data = Message::read(id::DATA_SM, body(&data_pdu).1).unwrap();
        assert_eq!(data.content(), b"a longer text in a TLV");
    }

    #[test]
    fn malformed_message_fields_get_their_statuses() {
        let src = Address {
            ton: 1,
            npi: 1,
            addr: b"31600000000",
        };
        let m = Message {
            service_type: b"",
            source: src,
            dests: vec![Dest::Sme(src)],
            esm_class: 0,
            registered_delivery: 0,
            data_coding: 0,
            short_message: b"hi",
            tlvs: Tlvs::none(),
        };
        let good = m.write(id::SUBMIT_SM, 1);
        let b = &good[HEADER_LEN..];
        // Cut anywhere, it is refused, never misread.
        for cut in 0..b.len() {
            assert!(
                Message::read(id::SUBMIT_SM, &b[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let long_source = Message {
            source: Address {
                ton: 1,
                npi: 1,
                addr: &[b'9'; 21],
            },
            ..m.clone()
        };
        let pdu = long_source.write(id::SUBMIT_SM, 1);
        assert_eq!(
            Message::read(id::SUBMIT_SM, &pdu[HEADER_LEN..]),
            Err(bad(status::INVALID_SOURCE_ADDR))
        );
        // A TLV cut short.
        let mut bad_tlv = good.clone();
        bad_tlv.extend_from_slice(&[0x04, 0x24, 0x00, 0x09, b'x']);
        assert_eq!(
            Message::read(id::SUBMIT_SM, &bad_tlv[HEADER_LEN..]),
            Err(bad(status::INVALID_OPT_PARAM_STREAM))
        );
        // submit_multi: no destinations, and an unknown dest_flag.
        let mut w = Writer::new(id::SUBMIT_MULTI, 0, 1);
        w.cstr(b"").address(src).u8(0);
        assert_eq!(
            Message::read(id::SUBMIT_MULTI, &w.finish()[HEADER_LEN..]),
            Err(bad(status::INVALID_NUM_DESTS))
        );
        let mut w = Writer::new(id::SUBMIT_MULTI, 0, 1);
        w.cstr(b"").address(src).u8(1).u8(3);
        assert_eq!(
            Message::read(id::SUBMIT_MULTI, &w.finish()[HEADER_LEN..]),
            Err(bad(status::INVALID_DEST_FLAG))
        );
    }

    #[test]
    fn submit_responses_give_their_message_id_and_refused_destinations() {
        let mut w = Writer::new(id::resp(id::SUBMIT_MULTI), 0, 9);
        w.cstr(b"M-42")
            .u8(1)
            .address(Address {
                ton: 1,
                npi: 1,
                addr: b"3169",
            })
            .u32(0x0B);
        let pdu = w.finish();
        let (h, b) = body(&pdu);
        let r = SubmitResp::read(h.id, b).unwrap();
        assert_eq!(r.message_id, b"M-42");
        assert_eq!(
            r.unsuccess,
            vec![(
                Address {
                    ton: 1,
                    npi: 1,
                    addr: b"3169"
                },
                0x0B
            )]
        );
        let error = Writer::new(id::resp(id::SUBMIT_SM), status::THROTTLED, 9).finish();
        let (h, b) = body(&error);
        assert_eq!(SubmitResp::read(h.id, b).unwrap().message_id, b"");
    }

    proptest! {
        /// Any bytes as any body: an error or a value, never a panic.
        #[test]
        fn reading_never_panics(
            command in prop_oneof![Just(id::SUBMIT_SM), Just(id::SUBMIT_MULTI), Just(id::DATA_SM), Just(id::DELIVER_SM)],
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = Message::read(command, &bytes);
            let _ = Bind::read(&bytes);
            let _ = SubmitResp::read(id::resp(id::SUBMIT_MULTI), &bytes);
            let _ = frame_len(&bytes, 65536);
        }

        /// What is written reads back the same.
        #[test]
        fn messages_round_trip(
            source in proptest::collection::vec(1u8..=255, 0..20),
            dests in proptest::collection::vec((any::<bool>(), proptest::collection::vec(1u8..=255, 0..20)), 1..10),
            esm_class in any::<u8>(),
            text in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let dests: Vec<Dest<'_>> = dests
                .iter()
                .map(|(list, a)| if *list { Dest::List(a) } else { Dest::Sme(Address { ton: 1, npi: 1, addr: a }) })
                .collect();
            let m = Message {
                service_type: b"",
                source: Address { ton: 0, npi: 0, addr: &source },
                dests,
                esm_class,
                registered_delivery: 0,
                data_coding: 0,
                short_message: &text,
                tlvs: Tlvs::none(),
            };
            let pdu = m.write(id::SUBMIT_MULTI, 1);
            prop_assert_eq!(Message::read(id::SUBMIT_MULTI, &pdu[HEADER_LEN..]).unwrap(), m);
        }
    }

    /// fuzz/artifacts/smpp_pdu/crash-b243e67ca2cca4c29454bfdc802f16267f6aadd6:
    /// esm_class_of read a submit_multi as if it were a submit_sm, and took a byte of
    /// its destination list for esm_class (here 2, the second destination's dest_flag).
    #[test]
    fn crash_b243e67c_submit_multi_has_no_esm_class_read_alone() {
        let pdu: &[u8] = b"\x00\x00\x00\x3a\x00\x00\x00\x21\x00\x00\x00\x00\x00\x00\x00\x01\
            \x00\x05\x00ACME\x00\x02\x01\x01\x0131612345678\x00\x02list\x00\
            \x00\x00\x00\x00\x00\x01\x00\x00\x00\x02hi";
        let (h, b) = body(pdu);
        assert_eq!(h.id, id::SUBMIT_MULTI);
        assert_eq!(Message::read(h.id, b).unwrap().esm_class, 0);
        assert_eq!(Message::esm_class_of(h.id, b), None);
    }
}
