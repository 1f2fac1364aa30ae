//! Reload (SIGHUP): every listener's TLS certificate is read again from its files, and
//! the configuration file's limits are applied to new connections. Established
//! connections are never closed: each keeps what it was accepted with (see
//! [`crate::net::Live`]).
//!
//! What a reload may change: a listener's `max-connections`, `max-connections-per-peer`,
//! `header-timeout`, HTTP's `max-body-bytes`, `idle-timeout` and `request-timeout`,
//! SMTP's `require-tls`, `max-message-bytes`, `max-recipients`, `command-timeout`,
//! `data-timeout` and `max-session`, SMPP's `window`, `bind-timeout`,
//! `inactivity-timeout`, `max-pdu-bytes` and `max-sessions-per-account`. Anything
//! else that changed (a listener added, an upstream, the store, the admin side...)
//! needs a restart. A reload is whole or nothing: when a certificate does not load,
//! the file does not, or it changes what needs a restart, nothing is applied, the log
//! says why, and serving goes on as before.

use std::sync::Arc;

use crate::config::{Config, ConfigError, ListenerConfig, ListenerProtocol};
use crate::ingress::http::Listener;
use crate::ingress::smpp::SmppListener;
use crate::ingress::smtp::SmtpListener;
use crate::ingress::tls::Certificate;
use crate::metrics::{Metrics, ResultLabels};
use crate::net::{Connections, Live};

/// What new connections of one listener are served with, by protocol.
pub enum Contexts {
    /// One per HTTP thread.
    Http(Vec<Live<Listener>>),
    Smtp(Live<SmtpListener>),
    Smpp(Live<SmppListener>),
}

/// What a reload can change in one running listener.
pub struct Reloadable {
    pub connections: Connections,
    pub certificate: Option<Arc<Certificate>>,
    pub contexts: Contexts,
}

impl Reloadable {
    /// `l`'s limits for new connections; `l` is this listener's, with nothing but
    /// limits changed ([`needs_restart`] said so).
    fn apply(&self, l: &ListenerConfig) {
        let limits = &l.limits;
        self.connections.set(
            limits.max_connections,
            limits.max_connections_per_peer,
            limits.header_timeout,
        );
        match (&self.contexts, &l.protocol) {
            (Contexts::Http(threads), ListenerProtocol::Http { .. }) => {
                for live in threads {
                    live.set(Arc::new(live.get().with_limits(*limits)));
                }
            }
            (Contexts::Smtp(live), ListenerProtocol::Smtp(smtp)) => {
                live.set(Arc::new(
                    live.get()
                        .with_settings(smtp.clone(), limits.header_timeout),
                ));
            }
            (Contexts::Smpp(live), ListenerProtocol::Smpp(smpp)) => {
                live.set(Arc::new(live.get().with_settings(smpp.clone())));
            }
            // needs_restart compares protocols first.
            _ => unreachable!("a reload never changes a listener's protocol"),
        }
    }
}

/// The running listeners' reloadable parts, and the configuration they run with.
pub struct Reloader {
    pub config: Config,
    /// In `config.listeners`' order.
    pub listeners: Vec<Reloadable>,
    pub admin_certificate: Option<Arc<Certificate>>,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reads every certificate again and loads `fresh`; when all of that went well and
    /// `fresh` changes nothing but limits, presents the new certificates and applies
    /// the limits to new connections. Otherwise nothing is applied. What went wrong,
    /// each in a sentence (logged here too); empty when the reload was applied.
    pub fn reload(&mut self, fresh: Result<Config, ConfigError>) -> Vec<String> {
        let mut problems = Vec::new();
        let certificates = self
            .config
            .listeners
            .iter()
            .zip(&self.listeners)
            .filter_map(|(l, r)| Some((l.name.as_str(), r.certificate.as_ref()?)))
            .chain(self.admin_certificate.as_ref().map(|c| ("admin", c)));
        let mut staged = Vec::new();
        for (name, certificate) in certificates {
            match certificate.read_again() {
                Ok(pair) => staged.push((certificate, pair)),
                Err(e) => problems.push(format!("{name}: its certificate: {e}")),
            }
        }
        let fresh = match fresh {
            Err(e) => {
                problems.push(format!("the configuration file: {e}"));
                None
            }
            Ok(fresh) => match needs_restart(&self.config, &fresh) {
                Some(what) => {
                    problems.push(format!(
                        "the configuration file: {what} changed, which needs a restart"
                    ));
                    None
                }
                None => Some(fresh),
            },
        };
        let result = match fresh {
            Some(fresh) if problems.is_empty() => {
                let renewed = staged.len();
                for (certificate, pair) in staged {
                    certificate.put(pair);
                }
                for (reloadable, l) in self.listeners.iter().zip(&fresh.listeners) {
                    reloadable.apply(l);
                }
                self.config = fresh;
                tracing::info!(
                    certificates = renewed,
                    "reloaded: certificates read again, listener limits applied to new connections"
                );
                "applied"
            }
            _ => {
                for p in &problems {
                    tracing::error!(
                        "reload refused, nothing applied (the running certificates and settings are kept): {p}"
                    );
                }
                "refused"
            }
        };
        self.metrics
            .reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        problems
    }
}

/// What differs between `old` and `new` beyond what a reload may change, named for
/// the operator; `None` when only reloadable settings differ.
pub fn needs_restart(old: &Config, new: &Config) -> Option<String> {
    if old.listeners.len() != new.listeners.len() {
        return Some("the set of listeners".into());
    }
    for (o, n) in old.listeners.iter().zip(&new.listeners) {
        if o.name != n.name {
            return Some(format!("listener `{}` (its name or place)", o.name));
        }
        // `n` with `o`'s reloadable settings is `o` when nothing else changed.
        let mut same = n.clone();
        same.limits = o.limits;
        match (&mut same.protocol, &o.protocol) {
            (ListenerProtocol::Http { .. }, ListenerProtocol::Http { .. }) => {}
            (ListenerProtocol::Smtp(s), ListenerProtocol::Smtp(o)) => {
                s.require_tls = o.require_tls;
                s.max_message_bytes = o.max_message_bytes;
                s.max_recipients = o.max_recipients;
                s.command_timeout = o.command_timeout;
                s.data_timeout = o.data_timeout;
                s.max_session = o.max_session;
            }
            (ListenerProtocol::Smpp(s), ListenerProtocol::Smpp(o)) => {
                s.window = o.window;
                s.bind_timeout = o.bind_timeout;
                s.inactivity_timeout = o.inactivity_timeout;
                s.max_pdu_bytes = o.max_pdu_bytes;
                s.max_sessions_per_account = o.max_sessions_per_account;
            }
            _ => return Some(format!("listener `{}`'s protocol", o.name)),
        }
        // The settings have no maps: their Debug forms compare field by field.
        if format!("{same:?}") != format!("{o:?}") {
            return Some(format!(
                "listener `{}` (beyond its limits: its address, TLS files, profile or upstream)",
                o.name
            ));
        }
    }
    let outside = |c: &Config| {
        let mut c = c.clone();
        c.listeners.clear();
        format!("{c:?}")
    };
    if outside(old) != outside(new) {
        return Some(
            "a setting outside [[listener]] (store, admin, log, compliance or serve)".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with an HTTP, an SMTP and an SMPP listener, each with `extra`
    /// lines of its own, and `rest` after them.
    fn config(http: &str, smtp: &str, smpp: &str, rest: &str) -> Config {
        let text = format!(
            "[[listener]]\nname = \"sms\"\nlisten = \"127.0.0.1:0\"\nprofile = \"kannel\"\n{http}\n\
             [[listener]]\nname = \"mail\"\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:0\"\n{smtp}\n\
             [[listener]]\nname = \"smpp\"\nprotocol = \"smpp\"\nlisten = \"127.0.0.1:0\"\n{smpp}\n{rest}"
        );
        Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    #[test]
    fn limits_reload_and_everything_else_needs_a_restart() {
        let base = config("", "", "", "");
        let reloadable = [
            config(
                "max-connections = 10\nmax-connections-per-peer = 5",
                "",
                "",
                "",
            ),
            config(
                "header-timeout = \"3s\"\nidle-timeout = \"5s\"\nrequest-timeout = \"2s\"\nmax-body-bytes = 100",
                "",
                "",
                "",
            ),
            config(
                "",
                "command-timeout = \"9s\"\ndata-timeout = \"9s\"\nmax-session = \"1m\"\nmax-message-bytes = 1000\nmax-recipients = 3\nrequire-tls = false",
                "",
                "",
            ),
            config(
                "",
                "",
                "window = 3\nbind-timeout = \"2s\"\ninactivity-timeout = \"9s\"\nmax-pdu-bytes = 9000\nmax-sessions-per-account = 2",
                "",
            ),
        ];
        for fresh in &reloadable {
            assert_eq!(needs_restart(&base, fresh), None, "{fresh:?}");
        }
        let restart = [
            (
                config("upstream = \"http://127.0.0.1:9\"", "", "", ""),
                "`sms`",
            ),
            (config("path = \"/send\"", "", "", ""), "`sms`"),
            (config("", "xclient = true", "", ""), "`mail`"),
            (config("", "", "receipt-wait = \"1h\"", ""), "`smpp`"),
            (
                config("", "", "", "[store]\nretention = \"6 months\"\n"),
                "outside [[listener]]",
            ),
            (
                config(
                    "",
                    "",
                    "",
                    "[[listener]]\nname = \"more\"\nlisten = \"127.0.0.1:0\"\nprofile = \"json\"\n[listener.json]\nrecipients-pointer = \"/to\"\n",
                ),
                "the set of listeners",
            ),
        ];
        for (fresh, what) in &restart {
            let why = needs_restart(&base, fresh).expect("needs a restart");
            assert!(why.contains(what), "{why}");
        }
        let moved = Config {
            listeners: base.listeners.iter().rev().cloned().collect(),
            ..base.clone()
        };
        assert!(needs_restart(&base, &moved).unwrap().contains("`sms`"));
    }
}
