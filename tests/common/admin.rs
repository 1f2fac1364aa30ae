//! The admin listener over HTTPS, in-process: `serve` with a TLS admin listener on a
//! manual clock, and a client that trusts only the test's certificate. Shared by the
//! API's and the console's tests.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::*;
use relaylog::clock::{Clock, ManualClock};
use relaylog::config::Config;

/// An HTTPS client for the admin listener that trusts only the test's certificate.
pub struct Admin {
    pub addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }
}

impl Admin {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, path, token, Bytes::from(body)).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> Reply {
        self.call(Method::POST, path, Some(token), body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn raw(&self, method: Method, path: &str, token: Option<&str>, body: Bytes) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        self.request(method, path, &headers, body).await
    }

    /// One request on a connection of its own, with these headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = self.tls.connect(name, tcp).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let (head, body) = resp.into_parts();
        Reply {
            status: head.status,
            headers: head.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    pub async fn login(&self, officer: &str, seed: &[u8], clock: &ManualClock) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/v1/session",
                None,
                Some(json!({
                    "officer": officer,
                    "password": format!("{officer}-long-password"),
                    "totp": totp_at(seed, clock.now_micros()),
                })),
            )
            .await;
        r.expect(StatusCode::CREATED)["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
    pub config: Config,
    pub clock: ManualClock,
    pub running: relaylog::serve::Running,
    pub admin: Admin,
}

/// `serve` with a TLS admin listener, on a manual clock set to now.
pub async fn start(four_eyes: bool) -> Setup {
    start_with(four_eyes, ManualClock::new(chrono::Utc::now()), |_| {}).await
}

/// [`start`], on `clock`, with `prepare` run on the configuration's path (keys made,
/// the database initialised on PostgreSQL) before `serve` starts.
pub async fn start_with(
    four_eyes: bool,
    clock: ManualClock,
    prepare: impl FnOnce(&std::path::Path),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("admin.crt"), dir.path().join("admin.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "{}tls-cert = \"{}\"\ntls-key = \"{}\"\nsession-ttl = \"15m\"\n\n[compliance]\nfour-eyes = {four_eyes}\nsingle-operator = true\n",
        config_text(dir.path(), "kannel", None, "", ""),
        cert.display(),
        key.display(),
    );
    let config_path = write_config(dir.path(), &text);
    init_keys(dir.path());
    let config = Config::parse(&text, &config_path).unwrap();
    init_database(&config);
    prepare(&config_path);
    let running = start_serve(config.clone(), Arc::new(clock.clone()))
        .await
        .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let admin = Admin {
        addr: running.admin.unwrap(),
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    Setup {
        dir,
        config_path,
        config,
        clock,
        running,
        admin,
    }
}

/// Sends `to` one message from `user` through the relay.
pub async fn relay_one(s: &Setup, user: &str, to: &str) {
    let url = format!("http://{}", s.running.addr("sms").unwrap());
    let (status, body) = get(&client(), &sendsms(&url, user, to)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// The console as a browser sees it, without one: its session cookie, forms posted
/// with the page's CSRF token.
pub struct ConsoleClient<'a> {
    pub admin: &'a Admin,
    pub session: Option<String>,
}

/// `(name, value)` of a `Set-Cookie` header named `name`, with its attributes.
pub fn set_cookie(r: &Reply, name: &str) -> Option<(String, String)> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..].split(';').next().unwrap().to_owned();
            (value, v.to_owned())
        })
}

/// The CSRF token a page's forms carry.
pub fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no form with a CSRF token in {html}"))
        + "name=\"csrf\" value=\"".len();
    html[at..at + 32].to_owned()
}

pub fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

pub fn form(fields: &[(&str, &str)]) -> Bytes {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    Bytes::from(s.finish())
}

impl<'a> ConsoleClient<'a> {
    pub fn new(admin: &'a Admin) -> Self {
        ConsoleClient {
            admin,
            session: None,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        let cookie = self
            .session
            .as_ref()
            .map(|s| format!("__Host-relaylog_console={s}"));
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        self.admin
            .request(Method::GET, path, &headers, Bytes::new())
            .await
    }

    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let cookie = self
            .session
            .as_ref()
            .map(|s| format!("__Host-relaylog_console={s}"));
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(c) = &cookie {
            headers.push(("cookie", c.as_str()));
        }
        self.admin
            .request(Method::POST, path, &headers, form(fields))
            .await
    }

    /// Posts a form of owned values.
    pub async fn send(&self, path: &str, fields: Vec<(&str, String)>) -> Reply {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.post(path, &pairs).await
    }

    /// Logs in through the login form; the reply to the form's post.
    pub async fn log_in(&mut self, officer: &str, code: &str) -> Reply {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let (secret, attrs) = set_cookie(&page, "__Host-relaylog_login").expect("a login cookie");
        assert!(
            attrs.contains("Secure")
                && attrs.contains("HttpOnly")
                && attrs.contains("SameSite=Strict"),
            "{attrs}"
        );
        let token = csrf(&text(&page));
        let password = format!("{officer}-long-password");
        // The browser sends the session cookie it has too: a login ends that session.
        let cookie = match &self.session {
            Some(old) => format!("__Host-relaylog_login={secret}; __Host-relaylog_console={old}"),
            None => format!("__Host-relaylog_login={secret}"),
        };
        let r = self
            .admin
            .request(
                Method::POST,
                "/console/login",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookie),
                ],
                form(&[
                    ("csrf", &token),
                    ("officer", officer),
                    ("password", &password),
                    ("totp", code),
                ]),
            )
            .await;
        if let Some((value, _)) = set_cookie(&r, "__Host-relaylog_console") {
            self.session = Some(value);
        }
        r
    }

    /// The CSRF token of the signed-in session (from any page's forms).
    pub async fn token(&self) -> String {
        csrf(&text(&self.get("/console/cases").await))
    }
}
