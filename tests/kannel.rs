//! relaylog in front of a real Kannel (Debian's bearerbox + smsbox, with kannel-extras'
//! fakesmsc as the SMSC), all on loopback. Skipped with a message when Kannel is not
//! installed, except in CI (`CI=true`), where a missing Kannel fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Method;
use relaylog::record::Outcome;
use relaylog::store::IndexKind;

const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";

/// Kannel's processes, killed when dropped.
struct Kannel {
    children: Vec<Child>,
    fakesmsc_log: PathBuf,
    sendsms: u16,
}

impl Drop for Kannel {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kannel_installed() -> bool {
    let present = [BEARERBOX, SMSBOX, FAKESMSC]
        .iter()
        .all(|p| Path::new(p).exists());
    if !present {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "Kannel is not installed ({BEARERBOX}, {SMSBOX}, {FAKESMSC}): .ci/run must apt-get install kannel kannel-extras"
            );
        }
        eprintln!("SKIPPED: Kannel not installed (apt-get install kannel kannel-extras)");
    }
    present
}

impl Kannel {
    fn start(dir: &Path) -> Kannel {
        let (admin, smsbox, sendsms, smsc) = (free_port(), free_port(), free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "group = core\nadmin-port = {admin}\nadmin-password = adminpw\nadmin-interface = 127.0.0.1\nadmin-allow-ip = \"127.0.0.1\"\n\
             smsbox-port = {smsbox}\nsmsbox-interface = 127.0.0.1\nbox-allow-ip = \"127.0.0.1\"\nlog-file = \"{d}/bearerbox.log\"\n\
             access-log = \"{d}/access.log\"\nstore-type = file\nstore-location = \"{d}/kannel.store\"\ndlr-storage = internal\n\n\
             group = smsc\nsmsc = fake\nsmsc-id = fake1\nhost = 127.0.0.1\nport = {smsc}\nconnect-allow-ip = 127.0.0.1\n\n\
             group = smsbox\nbearerbox-host = 127.0.0.1\nsendsms-port = {sendsms}\nsendsms-interface = 127.0.0.1\n\
             log-file = \"{d}/smsbox.log\"\nglobal-sender = 12345\n\n\
             group = sendsms-user\nusername = tester\npassword = foobar\nmax-messages = 3\nconcatenation = true\n"
        );
        let conf_path = dir.join("kannel.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let mut k = Kannel {
            children: Vec::new(),
            fakesmsc_log: dir.join("fakesmsc.out"),
            sendsms,
        };
        k.children
            .push(spawn_kannel_box(BEARERBOX, &conf_path, dir, "bearerbox"));
        wait_port(admin, "bearerbox admin");
        k.children.push(
            Command::new(FAKESMSC)
                .args([
                    "-H",
                    "127.0.0.1",
                    "-r",
                    &smsc.to_string(),
                    "-m",
                    "0",
                    "1 2 text nop",
                ])
                .stdin(Stdio::null())
                .stdout(log("fakesmsc.out"))
                .stderr(log("fakesmsc.err"))
                .spawn()
                .unwrap(),
        );
        k.children
            .push(spawn_kannel_box(SMSBOX, &conf_path, dir, "smsbox"));
        wait_port(sendsms, "smsbox sendsms");
        // Wait until the fake SMSC is online, else Kannel only queues ("3: Queued").
        wait_smsc_online(admin, "fake1");
        k
    }

    /// Lines `Got message N: <from to text …>` that fakesmsc printed.
    fn delivered(&self) -> Vec<String> {
        // fakesmsc logs to stderr; read both streams.
        let mut text = std::fs::read_to_string(&self.fakesmsc_log).unwrap_or_default();
        text.push_str(
            &std::fs::read_to_string(self.fakesmsc_log.with_extension("err")).unwrap_or_default(),
        );
        text.lines()
            .filter(|l| l.contains("Got message"))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_to_a_real_kannel() {
    if !kannel_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kannel_dir = dir.path().join("kannel");
    std::fs::create_dir_all(&kannel_dir).unwrap();
    let kannel = tokio::task::spawn_blocking(move || Kannel::start(&kannel_dir))
        .await
        .unwrap();
    let upstream = format!("http://127.0.0.1:{}", kannel.sendsms);
    let relay = Relay::start(
        dir.path(),
        &config_text(dir.path(), "kannel", Some(&upstream), "", ""),
    )
    .await;
    let c = client();
    let url = format!("{}/cgi-bin/sendsms", relay.url);

    // GET with two recipients.
    let (s, body) = get(
        &c,
        &format!("{url}?username=tester&password=foobar&to=%2B31612345678+0687654321&text=via+get"),
    )
    .await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (202, "0: Accepted for delivery")
    );
    // POST text/plain with X-Kannel-* headers (Kannel's header form).
    let h = [
        ("content-type", "text/plain"),
        ("x-kannel-username", "tester"),
        ("x-kannel-password", "foobar"),
        ("x-kannel-to", "+31644444444"),
    ];
    let (s, body) = send(&c, Method::POST, &url, &h, "via header post").await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (202, "0: Accepted for delivery")
    );
    // POST text/xml with two <da>.
    let xml = "<?xml version=\"1.0\"?><message><submit><da><number>+31622222222</number></da>\
               <da><number>+31633333333</number></da><ud>via xml</ud>\
               <from><username>tester</username><password>foobar</password></from></submit></message>";
    let (s, body) = send(&c, Method::POST, &url, &[("content-type", "text/xml")], xml).await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (202, "0: Accepted for delivery")
    );
    // A form-encoded POST: Kannel 1.4.5 refuses the content type; the refusal comes back
    // unchanged and is recorded as such.
    let form = "username=tester&password=foobar&to=%2B31655555555&text=via+form";
    let (s, body) = send(
        &c,
        Method::POST,
        &url,
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    )
    .await;
    assert_eq!((s.as_u16(), body.as_str()), (400, "Invalid content-type"));
    // Wrong password: Kannel's 403 comes back, the attempt is recorded as rejected.
    let (s, _) = get(
        &c,
        &format!("{url}?username=tester&password=wrong&to=%2B31666666666&text=x"),
    )
    .await;
    assert_eq!(s.as_u16(), 403);
    // Issue 10: a parameter given twice. Straight to Kannel, this request is delivered
    // to the first `to` as the first `username`; relaylog used to record the last ones
    // (someone else's account and number) while Kannel sent to the first. It is now
    // refused, named, counted, and neither forwarded nor recorded.
    let dup = "username=tester&password=foobar&username=nobody&from=555&text=dup&to=%2B31612000101&to=%2B31612000202";
    let (s, body) = get(&c, &format!("{url}?{dup}")).await;
    assert_eq!(s.as_u16(), 400, "{body}");
    assert!(body.contains("username given more than once"), "{body}");
    assert_metric(&relay.metrics().await, "reason=\"duplicate_field\"} 1");
    let sendsms = kannel.sendsms;
    let direct =
        tokio::task::spawn_blocking(move || http_get(sendsms, &format!("/cgi-bin/sendsms?{dup}")))
            .await
            .unwrap();
    assert!(direct.contains("Accepted for delivery"), "{direct}");
    // Review of issue 10: a POST with no content type. Kannel reads it as
    // octet-stream, from the X-Kannel-* headers, and never reads a POST's query; so
    // does relaylog now (it used to record the query's account and number).
    let h = [
        ("x-kannel-username", "tester"),
        ("x-kannel-password", "foobar"),
        ("x-kannel-to", "+31612000303"),
    ];
    let (s, body) = send(
        &c,
        Method::POST,
        &format!("{url}?username=nobody&password=x&to=%2B31612000404"),
        &h,
        "no content type",
    )
    .await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (202, "0: Accepted for delivery")
    );

    // (as sent, and so as Kannel delivers it; as recorded, normalised to E.164)
    let expected = [
        ("+31612000101", "+31612000101"),
        ("+31612000303", "+31612000303"),
        ("+31612345678", "+31612345678"),
        ("0687654321", "+31687654321"),
        ("+31644444444", "+31644444444"),
        ("+31622222222", "+31622222222"),
        ("+31633333333", "+31633333333"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered = kannel.delivered();
        if expected
            .iter()
            .all(|(sent, _)| delivered.iter().any(|l| l.contains(&format!(" {sent} "))))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fakesmsc did not get every message: {delivered:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !kannel.delivered().iter().any(|l| l.contains("+31655555555")
            || l.contains("+31666666666")
            || l.contains("+31612000202"))
    );
    // Kannel took the first `to`, from the first `username`'s messages; relaylog
    // recorded neither (the delivery went around it, straight to Kannel).
    for n in ["+31612000101", "+31612000202"] {
        assert!(relay.query(IndexKind::Recipient, n).await.is_empty(), "{n}");
    }
    assert!(relay.query(IndexKind::Account, "nobody").await.is_empty());

    relay.settle().await;
    for (_, n) in expected.iter().skip(1) {
        let f = relay.query(IndexKind::Recipient, n).await;
        assert_eq!(f.len(), 1, "{n}");
        assert_eq!(f[0].fields.account, "tester");
        let o = f[0].outcome.as_ref().unwrap();
        assert_eq!(
            (o.outcome, o.upstream_status, o.gateway_code),
            (Outcome::Accepted, Some(202), Some(0))
        );
    }
    let refused = relay.query(IndexKind::Recipient, "+31655555555").await;
    assert_eq!(
        refused[0].outcome.as_ref().unwrap().outcome,
        Outcome::Rejected
    );
    let denied = relay.query(IndexKind::Recipient, "+31666666666").await;
    assert_eq!(
        denied[0].outcome.as_ref().unwrap().upstream_status,
        Some(403)
    );
    relay.running.shutdown().await;
}
