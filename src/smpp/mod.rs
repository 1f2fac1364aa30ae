//! SMPP 3.4 as relaylog needs it: framing with a length cap, the bodies of the PDUs
//! whose metadata is recorded (binds, submit_sm, submit_multi, data_sm, deliver_sm and
//! their responses), concatenation ([`segment`](mod@segment)) and delivery receipts ([`receipt`](mod@receipt)).
//! Reading borrows from the frame; the relay passes every PDU on byte for byte.
//!
//! Nothing here keeps a password or message content: bind passwords and short
//! messages are fields of borrowed views, hidden from `Debug`.

pub mod pdu;
pub mod receipt;
pub mod segment;

pub use pdu::{
    Address, Bind, BodyError, Dest, FrameError, HEADER_LEN, Header, Message, SubmitResp, Tlvs,
    Writer, frame_len, id, is_receipt, status, tag, tlv_bytes,
};
pub use receipt::{Receipt, receipt};
pub use segment::{Segment, SegmentError, UDHI, segment};
