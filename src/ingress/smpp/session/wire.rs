//! Whole PDUs in, PDUs out: the reader of one leg, writes with a deadline, and the
//! short PDUs relaylog answers with itself.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::net::Io;
use crate::smpp::{Header, Writer, frame_len, id};

/// Reads whole PDUs from one leg, each at most `max` bytes.
pub(super) struct PduReader {
    io: ReadHalf<Box<dyn Io>>,
    buf: BytesMut,
    max: u32,
}

pub(super) enum ReadError {
    Closed,
    Frame,
}

impl PduReader {
    pub(super) fn new(io: ReadHalf<Box<dyn Io>>, max: u32) -> Self {
        PduReader {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            max,
        }
    }

    /// The next PDU if it is already whole in the buffer (no read).
    pub(super) fn buffered(&mut self) -> Option<Result<BytesMut, ReadError>> {
        match frame_len(&self.buf, self.max) {
            Ok(Some(n)) => Some(Ok(self.buf.split_to(n))),
            Ok(None) => None,
            Err(_) => Some(Err(ReadError::Frame)),
        }
    }

    /// The next PDU. Cancel-safe: what was read stays in the buffer.
    pub(super) async fn next(&mut self) -> Result<BytesMut, ReadError> {
        loop {
            if let Some(pdu) = self.buffered() {
                return pdu;
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(ReadError::Closed),
            }
        }
    }
}

/// PDUs for one leg are written together, at the latest when this many bytes wait.
pub(super) const MAX_OUT: usize = 64 * 1024;

/// The most a write to either leg may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The sequence number of PDUs relaylog sends itself (an unbind at the end).
pub(super) const OWN_SEQUENCE: u32 = 0x7FFF_FFFF;

pub(super) async fn send(w: &mut WriteHalf<Box<dyn Io>>, pdu: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(pdu)).await,
        Ok(Ok(()))
    )
}

/// A response with no body (or an empty message_id) to a request.
pub(super) fn answer(h: &Header, status: u32) -> Vec<u8> {
    let mut w = Writer::new(id::resp(h.id), status, h.sequence);
    if matches!(
        h.id,
        id::SUBMIT_SM | id::SUBMIT_MULTI | id::DATA_SM | id::DELIVER_SM
    ) {
        w.cstr(b"");
    }
    w.finish()
}

pub(super) fn nack(sequence: u32, status: u32) -> Vec<u8> {
    Writer::new(id::GENERIC_NACK, status, sequence).finish()
}

pub(super) fn unbind() -> Vec<u8> {
    Writer::new(id::UNBIND, 0, OWN_SEQUENCE).finish()
}

pub(super) async fn shutdown_write<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(1), w.shutdown())
        .await
        .unwrap_or(Ok(()))
}
