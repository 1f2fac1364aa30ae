//! A real ESME: Kannel's bearerbox with an `smsc = smpp` group bound to relaylog's
//! SMPP listener, relaylog in front of its built-in SMSC simulator. A sendsms to
//! smsbox reaches the simulator through relaylog, is recorded with the SMSC's message
//! id, and its delivery receipt comes back through relaylog to Kannel, whose DLR
//! callback fires. Skipped with a message when Kannel is not installed, except in CI
//! (`CI=true`), where a missing Kannel fails the test.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use relaylog::record::Outcome;
use relaylog::store::IndexKind;

const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const CANARY: &str = "canary-smpp-4b1d";

struct Kannel(Vec<Child>);

impl Drop for Kannel {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts bearerbox (its SMSC: relaylog at `smpp_port`) and smsbox; waits until the
/// SMPP link is online. (admin port, sendsms port).
fn start_kannel(dir: &Path, smpp_port: u16) -> (Kannel, u16) {
    let (admin, smsbox, sendsms) = (free_port(), free_port(), free_port());
    let d = dir.display();
    let conf = format!(
        "group = core\nadmin-port = {admin}\nadmin-password = adminpw\nadmin-interface = 127.0.0.1\nadmin-allow-ip = \"127.0.0.1\"\n\
         smsbox-port = {smsbox}\nsmsbox-interface = 127.0.0.1\nbox-allow-ip = \"127.0.0.1\"\nlog-file = \"{d}/bearerbox.log\"\n\
         store-type = file\nstore-location = \"{d}/kannel.store\"\ndlr-storage = internal\n\n\
         group = smsc\nsmsc = smpp\nsmsc-id = relay1\nhost = 127.0.0.1\nport = {smpp_port}\ntransceiver-mode = true\n\
         smsc-username = kannel\nsmsc-password = secret7\nsystem-type = VMA\nmsg-id-type = 0x03\nenquire-link-interval = 30\n\n\
         group = smsbox\nbearerbox-host = 127.0.0.1\nsendsms-port = {sendsms}\nsendsms-interface = 127.0.0.1\n\
         log-file = \"{d}/smsbox.log\"\nglobal-sender = 12345\n\n\
         group = sendsms-user\nusername = tester\npassword = foobar\nmax-messages = 3\nconcatenation = true\n"
    );
    let conf_path = dir.join("kannel.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut k = Kannel(Vec::new());
    k.0.push(spawn_kannel_box(BEARERBOX, &conf_path, dir, "bearerbox"));
    wait_port(admin, "bearerbox admin");
    k.0.push(spawn_kannel_box(SMSBOX, &conf_path, dir, "smsbox"));
    wait_port(sendsms, "smsbox sendsms");
    wait_smsc_online(admin, "relay1");
    (k, sendsms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kannel_submits_through_relaylog_and_gets_its_receipt() {
    let present = [BEARERBOX, SMSBOX].iter().all(|p| Path::new(p).exists());
    if !present {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("Kannel is not installed: .ci/run must apt-get install kannel");
        }
        eprintln!("SKIPPED: Kannel not installed (apt-get install kannel)");
        return;
    }
    let logs = LogCapture::start();
    let dir = tempfile::tempdir().unwrap();
    init_keys(dir.path());
    let text = format!(
        "{}[[listener]]\nname = \"smpp\"\nprotocol = \"smpp\"\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        common::store_table(dir.path(), "")
    );
    let config = relaylog::config::Config::parse(&text, Path::new("test.toml")).unwrap();
    let running = common::start_serve(config.clone(), Arc::new(relaylog::clock::SystemClock))
        .await
        .unwrap();
    let smpp_port = running.addr("smpp").unwrap().port();
    let admin = format!("http://{}", running.admin.unwrap());
    let dlr = CaptureUpstream::start("ok").await;
    let kannel_dir = dir.path().join("kannel");
    std::fs::create_dir_all(&kannel_dir).unwrap();
    let (kannel, sendsms) = {
        let kd = kannel_dir.clone();
        tokio::task::spawn_blocking(move || start_kannel(&kd, smpp_port))
            .await
            .unwrap()
    };
    let dlr_url = format!("{}/dlr?status=%d&id=%F", dlr.url());
    let encoded: String = dlr_url
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let c = client();
    let (s, body) = get(
        &c,
        &format!(
            "http://127.0.0.1:{sendsms}/cgi-bin/sendsms?username=tester&password=foobar&to=%2B31612345678&text={CANARY}&dlr-mask=3&dlr-url={encoded}"
        ),
    )
    .await;
    assert!(
        s.is_success() && body.contains("0: Accepted"),
        "{s} {body}\n{}",
        std::fs::read_to_string(kannel_dir.join("smsbox.log")).unwrap_or_default()
    );
    // The receipt reaches Kannel through relaylog, and Kannel calls back (1: delivered).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if dlr.count() > 0 && dlr.last().path_and_query.contains("status=1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no DLR callback:\n{}",
            std::fs::read_to_string(kannel_dir.join("bearerbox.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.settle().await.unwrap();
    let found = query_store(&config, IndexKind::Recipient, "+31612345678");
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(
        (f.protocol.as_str(), f.fields.account.as_str()),
        ("smpp", "kannel")
    );
    let o = f.outcome.as_ref().expect("an outcome");
    assert_eq!(o.outcome, Outcome::Accepted);
    assert!(o.upstream_message_id.is_some(), "the SMSC's message id");
    let smpp = f.fields.smpp.expect("SMPP details");
    assert!(
        smpp.registered_delivery & 0x01 != 0,
        "Kannel asked for a receipt"
    );
    let r = f
        .receipt
        .as_ref()
        .expect("the receipt, attached by message id");
    assert_eq!(r.state.as_deref(), Some("DELIVRD"));
    let metrics = get(&c, &format!("{admin}/metrics")).await.1;
    assert_metric(
        &metrics,
        "relaylog_smpp_receipts_total{listener=\"smpp\",result=\"matched\"} 1",
    );
    drop(kannel);
    running.shutdown().await;
    for canary in [CANARY, "secret7"] {
        assert!(!logs.text().contains(canary), "{canary} in relaylog's log");
        assert!(!metrics.contains(canary), "{canary} in the metrics");
        for f in files_under(dir.path())
            .into_iter()
            .filter(|f| !f.starts_with(&kannel_dir))
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
