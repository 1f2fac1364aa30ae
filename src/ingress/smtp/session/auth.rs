//! AUTH (passed through, the identity kept) and STARTTLS towards the client.

use super::*;

/// Why an AUTH was refused because relaylog could not record its identity.
fn unrecordable(why: offer::AuthRefusal) -> &'static str {
    match why {
        // Upstreams honour an authorization identity differently: whom to record?
        offer::AuthRefusal::Proxy => {
            "5.7.8 relaylog: an authorization identity other than the login is not supported"
        }
        _ => {
            "5.7.8 relaylog: a user name with spaces at its ends or control characters is not supported"
        }
    }
}

impl Session<'_> {
    pub(super) async fn starttls(&mut self, args: &[u8]) -> Result<(), Stop> {
        let Some(acceptor) = self.listener.starttls.clone().filter(|_| !self.tls) else {
            self.refuse(
                502,
                "5.5.1 Error: command not implemented",
                "starttls_unavailable",
            );
            return Ok(());
        };
        if !args.is_empty() {
            self.refuse(501, "5.5.4 Syntax: STARTTLS", "bad_command");
            return Ok(());
        }
        if self.tx.is_some() || self.authenticated {
            self.refuse(
                503,
                "5.5.1 Error: STARTTLS only before MAIL and AUTH",
                "bad_sequence",
            );
            return Ok(());
        }
        self.say(&Reply::local(220, "2.0.0 Ready to start TLS"));
        self.flush().await?;
        // What a client pipelined after STARTTLS was sent in the clear: it must not be
        // read as if it came under TLS (the STARTTLS command injection attack).
        if self.client.discard_buffered() > 0 {
            return Err(Stop::Close(
                Reply::local(421, "4.7.0 relaylog: commands after STARTTLS, closing"),
                Some("starttls_injection"),
            ));
        }
        let plain = std::mem::replace(&mut self.client, Wire::new(Box::new(smtp::Closed)));
        let Wire { io, .. } = plain;
        let wait = self.within(self.listener.handshake_timeout);
        let relay = &self.listener.relay;
        match tokio::time::timeout(wait, acceptor.accept(io)).await {
            Ok(Ok(tls)) => {
                self.client = Wire::new(Box::new(tls));
                self.tls = true;
                self.needs_ehlo = true;
                Ok(())
            }
            Ok(Err(_)) => {
                relay.metrics.cut(&relay.name, "handshake_failed");
                Err(Stop::ClientGone)
            }
            Err(_) => {
                relay.metrics.cut(&relay.name, "handshake_timeout");
                Err(Stop::ClientGone)
            }
        }
    }

    /// What must come before AUTH and MAIL: TLS with `require-tls` (`530 5.7.0`), and
    /// after STARTTLS a new EHLO (`503 5.5.1`). True when the command was refused.
    pub(super) fn not_ready(&mut self) -> bool {
        if self.listener.settings.require_tls && !self.tls {
            self.refuse(
                530,
                "5.7.0 Must issue a STARTTLS command first",
                "tls_required",
            );
            return true;
        }
        if self.needs_ehlo {
            self.refuse(503, "5.5.1 Error: send HELO/EHLO first", "bad_sequence");
            return true;
        }
        false
    }

    pub(super) async fn auth(&mut self, line: &[u8], args: &[u8]) -> Result<(), Stop> {
        if self.not_ready() {
            return Ok(());
        }
        if self.authenticated {
            self.refuse(503, "5.5.1 Error: already authenticated", "bad_sequence");
            return Ok(());
        }
        if self.tx.is_some() {
            self.refuse(
                503,
                "5.5.1 Error: MAIL transaction in progress",
                "bad_sequence",
            );
            return Ok(());
        }
        let mut watch = match AuthWatch::start(args) {
            Ok(watch) => watch,
            Err(offer::AuthRefusal::Mechanism) => {
                self.refuse(
                    504,
                    "5.5.4 Unsupported authentication mechanism",
                    "auth_mechanism",
                );
                return Ok(());
            }
            Err(offer::AuthRefusal::Syntax) => {
                self.refuse(
                    501,
                    "5.5.4 Syntax: AUTH mechanism [initial-response]",
                    "bad_command",
                );
                return Ok(());
            }
            Err(why) => {
                self.refuse(535, unrecordable(why), "auth_identity");
                return Ok(());
            }
        };
        let mut reply = self.pass(line).await?;
        // 334: a challenge, then one client response; until the upstream decides.
        while reply.code == 334 {
            watch.challenge(&reply);
            self.say(&reply);
            self.flush().await?;
            let wait = self.within(self.listener.settings.command_timeout);
            let len = match self.client.line(smtp::MAX_COMMAND_LINE, wait).await {
                Ok(Line::Text { len, .. }) => len,
                // Too long for a response: cancel the exchange upstream.
                Ok(Line::TooLong) => {
                    reply = self.pass(b"*").await?;
                    continue;
                }
                Err(e) => return Err(self.line_failed(e)),
            };
            // The response may hold the password: it is passed on and dropped, never
            // logged, never kept.
            let response = self.client.buffered()[..len].to_vec();
            self.client.consume_line(len);
            if response.iter().any(|&b| b == b'\r' || b == 0) {
                reply = self.pass(b"*").await?;
                continue;
            }
            if let Err(why) = watch.response(&response) {
                // Not passed on: the upstream's exchange is cancelled, and must end.
                let cancelled = self.pass(b"*").await?;
                if matches!(cancelled.code, 235 | 334) {
                    let e = WireError::Malformed("AUTH not ended by its cancel");
                    return Err(self.upstream_lost(e.into()).await);
                }
                self.refuse(535, unrecordable(why), "auth_identity");
                return Ok(());
            }
            reply = self.pass(&response).await?;
        }
        if reply.code == 235 {
            self.authenticated = true;
            self.account = watch.identity();
            if self.account.is_none() {
                // The upstream knows who this is and relaylog does not: no mail of
                // this session could be recorded under its account.
                return Err(Stop::Close(
                    Reply::local(
                        421,
                        "4.7.0 relaylog: cannot tell who authenticated, closing",
                    ),
                    Some("auth_identity"),
                ));
            }
        }
        self.say(&reply);
        Ok(())
    }
}
