//! The rows the writer inserts and the integrity layer hashes, sealed and indexed: the
//! shapes both share, so that neither imports the other (`integrity` folds them into
//! its Merkle tree; `writer` commits them).

/// A SHA-256 digest: a Merkle leaf or node.
pub type Hash = [u8; 32];

/// One recipient row, sealed and indexed, ready to insert.
#[derive(Debug, Clone)]
pub struct Row {
    pub submission: i64,
    pub ordinal: u32,
    pub at_us: i64,
    pub bucket: i64,
    pub protocol: u8,
    pub service: u8,
    pub recipient_form: u8,
    pub segments: u16,
    pub account_ix: i64,
    pub ip_ix: i64,
    pub originator_ix: Option<i64>,
    pub recipient_ix: i64,
    pub sealed: Vec<u8>,
    /// Merkle leaf of this row (see `integrity`), hashed by the sealing thread.
    pub leaf: Hash,
}

#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub submission: i64,
    pub at_us: i64,
    pub outcome: u8,
    pub upstream_status: Option<u16>,
    pub gateway_code: Option<i32>,
    pub message_id_sealed: Option<Vec<u8>>,
    pub enhanced_status: Option<String>,
    pub size_bytes: Option<u64>,
    /// SMPP: the recipient this event is about (`None`: the whole submission).
    pub ordinal: Option<u32>,
    pub receipt_state: Option<String>,
    pub receipt_error: Option<String>,
    pub receipt_done: Option<String>,
    pub leaf: Hash,
}

impl OutcomeRow {
    /// An event of `outcome` about `submission` at `at_us`, every other field empty and
    /// its leaf not made yet: the fields that apply are set after.
    pub fn bare(submission: i64, at_us: i64, outcome: u8) -> Self {
        OutcomeRow {
            submission,
            at_us,
            outcome,
            upstream_status: None,
            gateway_code: None,
            message_id_sealed: None,
            enhanced_status: None,
            size_bytes: None,
            ordinal: None,
            receipt_state: None,
            receipt_error: None,
            receipt_done: None,
            leaf: [0; 32],
        }
    }
}
