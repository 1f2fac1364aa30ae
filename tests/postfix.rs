//! relaylog in front of a real Postfix, driven by swaks: a private Postfix instance on
//! a loopback port from a temporary `config_directory` (its queue and logs in the same
//! temporary directory), relaying to an in-process sink MTA. Needs root (Postfix's
//! master runs as root), `postfix`, `swaks` with TLS, and Cyrus SASL's sasldb: `.ci/run`
//! installs them. Skipped with a message when they are missing; a failure under
//! `CI=true`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use relaylog::config::Config;
use relaylog::record::Outcome;
use relaylog::simulator::smtp::SmtpSink;
use relaylog::store::keys::IndexKind;

const PASSWORD: &str = "canary-pass-1d9f";
const SUBJECT: &str = "canary-subject-44e0";
const BODY: &str = "canary-body-b7c2";

fn missing() -> Option<String> {
    for tool in ["postfix", "swaks", "saslpasswd2"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let support = Command::new("swaks").arg("--support").output().ok()?;
    if !String::from_utf8_lossy(&support.stdout).contains("TLS supported")
        && !String::from_utf8_lossy(&support.stderr).contains("TLS supported")
    {
        return Some("swaks has no TLS (libnet-ssleay-perl)".into());
    }
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        return Some("not root: Postfix's master needs root".into());
    }
    None
}

/// A private Postfix: smtpd on `port`, relaying everything to `relayhost`; stopped on drop.
struct Postfix {
    dir: PathBuf,
    port: u16,
}

impl Postfix {
    fn start(dir: &Path, relayhost: SocketAddr) -> Postfix {
        let port = free_port();
        let etc = dir.join("etc");
        for d in ["etc/sasl", "queue", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let d = dir.display();
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
                 mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 myhostname = postfix.relaylog.test\nmydestination =\nrelayhost = [{}]:{}\nmynetworks = 127.0.0.0/8\n\
                 smtp_dns_support_level = disabled\nmaillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n\
                 smtpd_authorized_xclient_hosts = 127.0.0.1\nsmtpd_client_port_logging = yes\n\
                 smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\n\
                 smtpd_sasl_security_options = noanonymous\n\
                 smtpd_recipient_restrictions = check_recipient_access inline:{{ {{ refused@example.net = 550 5.1.1 no such user }} }}, permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination\n\
                 alias_maps =\nalias_database =\nlocal_recipient_maps =\n",
                relayhost.ip(),
                relayhost.port()
            ),
        )
        .unwrap();
        // service type private unpriv chroot wakeup maxproc command
        let unix = |name: &str, private: &str, max: &str, cmd: &str| {
            let wakeup = match name {
                "pickup" => "60",
                "qmgr" => "300",
                _ => "-",
            };
            format!("{name} unix {private} - n {wakeup} {max} {cmd}\n")
        };
        let mut master = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
        for (name, private, max, cmd) in [
            ("pickup", "n", "1", "pickup"),
            ("cleanup", "n", "0", "cleanup"),
            ("qmgr", "n", "1", "qmgr"),
            ("rewrite", "-", "-", "trivial-rewrite"),
            ("bounce", "-", "0", "bounce"),
            ("defer", "-", "0", "bounce"),
            ("trace", "-", "0", "bounce"),
            ("verify", "-", "1", "verify"),
            ("flush", "n", "0", "flush"),
            ("proxymap", "-", "-", "proxymap"),
            ("smtp", "-", "-", "smtp"),
            ("relay", "-", "-", "smtp"),
            ("showq", "n", "-", "showq"),
            ("error", "-", "-", "error"),
            ("retry", "-", "-", "error"),
            ("discard", "-", "-", "discard"),
            ("anvil", "-", "1", "anvil"),
            ("scache", "-", "1", "scache"),
        ] {
            master.push_str(&unix(name, private, max, cmd));
        }
        master.push_str("postlog unix-dgram n - n - 1 postlogd\n");
        std::fs::write(etc.join("master.cf"), master).unwrap();
        // Debian's Postfix reads SASL settings from <config_directory>/sasl.
        std::fs::write(
            etc.join("sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {d}/etc/sasl/sasldb2\n"
            ),
        )
        .unwrap();
        let sasldb = etc.join("sasl/sasldb2");
        let mut add = Command::new("saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(&sasldb)
            .args(["-u", "postfix.relaylog.test", "alice"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        add.stdin
            .take()
            .unwrap()
            .write_all(PASSWORD.as_bytes())
            .unwrap();
        assert!(add.wait().unwrap().success(), "saslpasswd2");
        let uid = String::from_utf8(
            Command::new("id")
                .args(["-u", "postfix"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
        std::os::unix::fs::chown(&sasldb, Some(uid), None).unwrap();
        std::os::unix::fs::chown(dir.join("data"), Some(uid), None).unwrap();
        let postfix = Postfix {
            dir: dir.to_owned(),
            port,
        };
        let out = postfix.postfix("start");
        assert!(
            out.status.success(),
            "postfix start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Wait for smtpd to listen.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return postfix;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postfix does not listen: {}", postfix.log());
    }

    fn postfix(&self, verb: &str) -> std::process::Output {
        Command::new("postfix")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg(verb)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix("stop");
    }
}

/// Runs swaks against relaylog; its transcript.
async fn swaks(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("swaks").args(&args).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn relaylog_in_front_of_postfix_records_every_accepted_recipient() {
    if let Some(why) = missing() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the Postfix test: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let logs = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let delivered = sink.stats.clone();
    let (_stop_sink, sink_shutdown) = relaylog::shutdown::channel();
    tokio::spawn(sink.run(sink_shutdown));
    let postfix = Postfix::start(&dir.path().join("postfix"), sink_addr);

    let (_, tls_keys) = cert_files(dir.path(), "smtp");
    let text = smtp_config_text(
        dir.path(),
        &format!(
            "upstream = \"smtp://127.0.0.1:{}\"\nxclient = true\n{tls_keys}",
            postfix.port
        ),
        "",
    );
    init_keys(dir.path());
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let running = common::start_serve(config.clone(), Arc::new(relaylog::clock::SystemClock))
        .await
        .unwrap();
    let relay = running.addr("mail").unwrap();
    let admin = format!("http://{}", running.admin.unwrap());
    let server = relay.to_string();
    let base = |to: &str| -> Vec<String> {
        [
            "--server",
            &server,
            "--from",
            "sender@example.org",
            "--to",
            to,
            "--header",
            &format!("Subject: {SUBJECT}"),
            "--body",
            BODY,
            "--hide-informational",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // Plain, in the clear.
    let (ok, t) = swaks(base("plain@example.net")).await;
    assert!(ok, "{t}\n{}", postfix.log());
    // STARTTLS and AUTH PLAIN, two recipients, one refused by Postfix.
    let mut args = base("auth@example.net,refused@example.net");
    args.extend(
        [
            "-tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@postfix.relaylog.test",
            "--auth-password",
            PASSWORD,
        ]
        .map(String::from),
    );
    let (_, t) = swaks(args).await;
    assert!(t.contains("235 2.7.0"), "{t}");
    assert!(
        t.contains("550 5.1.1 <refused@example.net>"),
        "Postfix's refusal, unchanged: {t}"
    );
    assert!(t.contains("250 2.0.0 Ok: queued as"), "{t}");
    // PIPELINING.
    let mut args = base("piped@example.net");
    args.push("--pipeline".into());
    let (ok, t) = swaks(args).await;
    assert!(ok, "{t}");
    // BDAT, by hand (swaks does not speak CHUNKING).
    let (mut c, greeting) = SmtpClient::connect(relay).await;
    assert_eq!(greeting.code, 220);
    let msg = format!("Subject: {SUBJECT}\r\n\r\n{BODY}\r\n");
    let batch = format!(
        "EHLO client\r\nMAIL FROM:<sender@example.org>\r\nRCPT TO:<chunked@example.net>\r\nBDAT 10\r\n{}BDAT {} LAST\r\n{}",
        &msg[..10],
        msg.len() - 10,
        &msg[10..]
    );
    c.send(batch.as_bytes()).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(c.reply().await.code);
    }
    assert_eq!(codes, [250, 250, 250, 250, 250], "{}", postfix.log());
    assert_eq!(c.code("QUIT").await, 221);

    // Postfix delivers all four to the sink.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while delivered.messages.load(Ordering::SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {}",
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.settle().await.unwrap();

    let log = postfix.log();
    for to in ["plain", "auth", "piped", "chunked"] {
        let found = query_store(&config, IndexKind::Recipient, &format!("{to}@example.net"));
        assert_eq!(found.len(), 1, "{to}");
        let o = found[0].outcome.as_ref().expect("an outcome");
        assert_eq!(
            (o.outcome, o.upstream_status),
            (Outcome::Accepted, Some(250)),
            "{to}"
        );
        assert_eq!(o.enhanced_status.as_deref(), Some("2.0.0"));
        let id = o.upstream_message_id.clone().expect("Postfix's queue id");
        assert!(
            log.contains(&format!("{id}: to=<{to}@example.net>")),
            "{id} in Postfix's log for {to}"
        );
        assert!(o.size_bytes.unwrap() > BODY.len() as u64);
    }
    // xclient = true: Postfix logs each client's own port (relaylog's outbound
    // ports are others), as relaylog recorded it.
    for to in ["plain", "auth", "piped", "chunked"] {
        let found = query_store(&config, IndexKind::Recipient, &format!("{to}@example.net"));
        let port = found[0].fields.client_port;
        assert!(
            log.contains(&format!("[127.0.0.1]:{port}")),
            "{to}: the client's port {port} in Postfix's log"
        );
    }
    let auth = query_store(&config, IndexKind::Recipient, "auth@example.net");
    assert_eq!(auth[0].fields.account, "alice@postfix.relaylog.test");
    assert!(query_store(&config, IndexKind::Recipient, "refused@example.net").is_empty());

    let metrics = get(&client(), &format!("{admin}/metrics")).await.1;
    running.shutdown().await;
    drop(postfix);
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let canaries = [
        PASSWORD.to_owned(),
        SUBJECT.to_owned(),
        BODY.to_owned(),
        b64(PASSWORD),
        b64(&format!("\0alice@postfix.relaylog.test\0{PASSWORD}")),
    ];
    assert!(
        !logs.lines("relaylog::access").is_empty(),
        "relaylog's log was captured"
    );
    for canary in &canaries {
        let canary = canary.as_str();
        assert!(!logs.text().contains(canary), "{canary} in relaylog's log");
        assert!(!metrics.contains(canary), "{canary} in the metrics");
        // Everything of relaylog's under the data directory (Postfix's own queue and
        // log are Postfix's business).
        for f in files_under(dir.path())
            .into_iter()
            .filter(|f| !f.starts_with(dir.path().join("postfix")))
        {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !contains(&bytes, canary.as_bytes()),
                "{canary} in {}",
                f.display()
            );
        }
    }
}
