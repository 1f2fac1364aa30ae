//! Until the bind: enquire_link answered, anything else refused; then the client's
//! bind PDU opens an upstream session, whose bind_resp goes back unchanged.

use std::time::Instant;

use bytes::BytesMut;
use tokio::io::WriteHalf;

use super::wire::{PduReader, ReadError, answer, nack, send, unbind};
use crate::egress::smpp::SmppUpstreamError;
use crate::ingress::smpp::SmppListener;
use crate::net::Io;
use crate::relay::Exit;
use crate::shutdown::Shutdown;
use crate::smpp::{Bind, HEADER_LEN, Header, id, status};

/// A bound session's place in `max-sessions-per-account`, given back on drop.
pub(super) struct AccountSlot<'l> {
    listener: &'l SmppListener,
    account: String,
}

impl<'l> AccountSlot<'l> {
    /// Is there a place for one more session of `account`?
    fn free(listener: &SmppListener, account: &str) -> bool {
        let accounts = listener.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.get(account).copied().unwrap_or(0) < listener.settings.max_sessions_per_account
    }

    fn take(listener: &'l SmppListener, account: &str) -> Option<Self> {
        let mut accounts = listener.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let n = accounts.entry(account.to_owned()).or_default();
        if *n >= listener.settings.max_sessions_per_account {
            return None;
        }
        *n += 1;
        Some(AccountSlot {
            listener,
            account: account.to_owned(),
        })
    }
}

impl Drop for AccountSlot<'_> {
    fn drop(&mut self) {
        let mut accounts = self
            .listener
            .accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = accounts.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                accounts.remove(&self.account);
            }
        }
    }
}

/// A session both legs have bound.
pub(super) struct Bound<'l> {
    pub account: String,
    pub cw: WriteHalf<Box<dyn Io>>,
    pub up: PduReader,
    pub uw: WriteHalf<Box<dyn Io>>,
    pub slot: AccountSlot<'l>,
}

/// Waits for the client's bind (within bind-timeout) and opens the upstream session
/// with it. `None`: the session is over (refused, timed out, shut down), its client
/// told why where there is a reply for it.
pub(super) async fn bind<'l>(
    l: &'l SmppListener,
    client: &mut PduReader,
    mut cw: WriteHalf<Box<dyn Io>>,
    shutdown: &mut Shutdown,
) -> Option<Bound<'l>> {
    let started = Instant::now();
    let bind_deadline = tokio::time::Instant::from_std(started + l.settings.bind_timeout);
    let (bind_pdu, h) = loop {
        let pdu = tokio::select! {
            pdu = tokio::time::timeout_at(bind_deadline, client.next()) => pdu,
            _ = shutdown.wait() => return None,
        };
        let pdu = match pdu {
            Ok(Ok(pdu)) => pdu,
            Ok(Err(ReadError::Frame)) => {
                l.relay.metrics.cut(&l.relay.name, "pdu_length");
                send(&mut cw, &nack(0, status::INVALID_CMD_LENGTH)).await;
                return None;
            }
            Ok(Err(ReadError::Closed)) => return None,
            Err(_) => {
                l.relay.metrics.cut(&l.relay.name, "bind_timeout");
                return None;
            }
        };
        let h = Header::read(&pdu)?;
        let reply = match h.id {
            id::BIND_RECEIVER | id::BIND_TRANSMITTER | id::BIND_TRANSCEIVER => break (pdu, h),
            id::ENQUIRE_LINK => answer(&h, status::OK),
            other if !id::known(other) => nack(h.sequence, status::INVALID_CMD_ID),
            _ if h.is_response() => continue,
            _ => answer(&h, status::INVALID_BIND_STATUS),
        };
        if !send(&mut cw, &reply).await {
            return None;
        }
    };
    let refuse = |reason: &'static str, code: u32| {
        l.relay.log(Exit::Rejected(reason), code as u16, started);
    };
    let account = match Bind::read(&bind_pdu[HEADER_LEN..]) {
        // An id the SMSC could read apart from another (spaces, bytes that are not
        // UTF-8, controls) would share its records: refused.
        Ok(b) => match std::str::from_utf8(b.system_id) {
            Ok(id) if !id.is_empty() && id.bytes().all(|c| c.is_ascii_graphic() || c >= 0x80) => {
                id.to_owned()
            }
            _ => {
                refuse("bad_bind", status::INVALID_SYSTEM_ID);
                send(&mut cw, &answer(&h, status::INVALID_SYSTEM_ID)).await;
                return None;
            }
        },
        Err(e) => {
            refuse("bad_bind", e.status);
            send(&mut cw, &answer(&h, e.status)).await;
            return None;
        }
    };
    if !AccountSlot::free(l, &account) {
        refuse("too_many_sessions", status::BIND_FAILED);
        send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
        return None;
    }
    let (up, mut uw, resp) = match bind_upstream(l, &bind_pdu, &h).await {
        Ok(leg) => leg,
        Err(e) => {
            l.relay.log(
                Exit::Passthrough(Some(&e)),
                status::BIND_FAILED as u16,
                started,
            );
            send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
            return None;
        }
    };
    // The password is not kept past the bind.
    drop(bind_pdu);
    let bound =
        Header::read(&resp).is_some_and(|r| r.id == id::resp(h.id) && r.status == status::OK);
    l.metrics.bind(h.id, bound);
    if !bound {
        // The SMSC's refusal, unchanged.
        send(&mut cw, &resp).await;
        return None;
    }
    // A place counts only once the SMSC has let the account in: a bind that fails
    // (a wrong password) never holds one.
    let Some(slot) = AccountSlot::take(l, &account) else {
        refuse("too_many_sessions", status::BIND_FAILED);
        send(&mut uw, &unbind()).await;
        send(&mut cw, &answer(&h, status::BIND_FAILED)).await;
        return None;
    };
    // The bind_resp, unchanged.
    if !send(&mut cw, &resp).await {
        return None;
    }
    Some(Bound {
        account,
        cw,
        up,
        uw,
        slot,
    })
}

/// Opens the upstream session with the client's bind PDU; the upstream's bind_resp
/// (an enquire_link before it is answered), all within upstream-timeout.
async fn bind_upstream(
    l: &SmppListener,
    bind_pdu: &[u8],
    h: &Header,
) -> Result<(PduReader, WriteHalf<Box<dyn Io>>, BytesMut), SmppUpstreamError> {
    let until = tokio::time::Instant::now() + l.upstream.timeout;
    let (ur, mut uw) = tokio::io::split(l.upstream.connect().await?);
    let mut up = PduReader::new(ur, l.settings.max_pdu_bytes);
    if !send(&mut uw, bind_pdu).await {
        return Err(SmppUpstreamError::Closed);
    }
    loop {
        let pdu = match tokio::time::timeout_at(until, up.next()).await {
            Ok(Ok(pdu)) => pdu,
            Ok(Err(ReadError::Frame)) => return Err(SmppUpstreamError::Malformed),
            Ok(Err(ReadError::Closed)) => return Err(SmppUpstreamError::Closed),
            Err(_) => return Err(SmppUpstreamError::Timeout),
        };
        let uh = Header::read(&pdu).ok_or(SmppUpstreamError::Malformed)?;
        if uh.id == id::ENQUIRE_LINK {
            send(&mut uw, &answer(&uh, status::OK)).await;
            continue;
        }
        if uh.sequence != h.sequence {
            return Err(SmppUpstreamError::Malformed);
        }
        return Ok((up, uw, pdu));
    }
}
