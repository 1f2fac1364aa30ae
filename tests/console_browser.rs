//! The console in a real browser: Debian's Chromium, driven through WebDriver
//! (chromedriver, with fantoccini), against `serve` with admin TLS on a manual clock.
//!
//! Two officers log in with TOTP codes computed from their enrolment URIs; one opens a
//! case, the other approves it, the first discloses and downloads the export with its
//! manifest and signature, and the download verifies with `verify-export`. Every page
//! is photographed into `$CARGO_TARGET_TMPDIR/console-screenshots/`. Without
//! Chromium or chromedriver the test fails under `CI=true` and is skipped (said on
//! stderr) elsewhere.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use common::admin::*;
use common::*;
use relaylog::clock::Clock;

/// A program on the `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Chromium's own binary (Debian's `chromium` on the `PATH` is a shell launcher).
fn chromium() -> Option<PathBuf> {
    let own = PathBuf::from("/usr/lib/chromium/chromium");
    if own.is_file() {
        return Some(own);
    }
    on_path("chromium")
}

/// How long a page or a download may take, in tenths of a second (2 cores, busy).
const WAIT_TENTHS: u32 = 300;

/// chromedriver on a port of its own, in a process group of its own: dropped (the
/// test over, or failed), the group is killed, the Chromium processes it started
/// with it.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group this child leads (process_group(0) below).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn driver() -> Option<(Driver, PathBuf)> {
    let (Some(chromedriver), Some(chromium)) = (on_path("chromedriver"), chromium()) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium or chromedriver is missing: .ci/run installs Debian's chromium and chromium-driver"
        );
        eprintln!(
            "skipped: chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let port = free_port();
    let child = std::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let d = Driver { child, port };
    for _ in 0..WAIT_TENTHS {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some((d, chromium));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

/// A headless Chromium of its own (profile, downloads), which trusts the test's
/// self-signed certificate as a browser told to accept it.
async fn browser(d: &Driver, chromium: &Path, profile: &Path, downloads: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--lang=en-US",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session")
}

struct Shots {
    dir: PathBuf,
}

impl Shots {
    async fn take(&self, c: &Client, name: &str) {
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        std::fs::write(self.dir.join(format!("{name}.png")), png).unwrap();
    }
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap_or_else(|e| {
        panic!("no field #{id}: {e}");
    });
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("nothing at {css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Waits until the page's path (and query) is `want`.
async fn at(c: &Client, want: &str) {
    for _ in 0..WAIT_TENTHS {
        let url = c.current_url().await.unwrap();
        let here = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        if here == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = c.current_url().await.unwrap();
    let source = c.source().await.unwrap_or_default();
    panic!("not at {want} but at {url}: {source}");
}

async fn log_in(c: &Client, base: &str, officer: &str, code: &str) {
    c.goto(&format!("{base}/console/login")).await.unwrap();
    fill(c, "officer", officer).await;
    fill(c, "password", &format!("{officer}-long-password")).await;
    fill(c, "totp", code).await;
    click(c, "main form button[type=submit]").await;
    at(c, "/console/cases").await;
}

/// Waits for a download to finish: the file there, and no partial one beside it.
async fn downloaded(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for _ in 0..WAIT_TENTHS {
        let partial = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"));
        if path.exists() && !partial {
            return path;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let there: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    panic!("{name} was not downloaded; the directory has {there:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_officers_open_approve_disclose_and_download_in_chromium() {
    let Some((d, chromium)) = driver().await else {
        return;
    };
    let s = start(true).await;
    let anna = add_officer(&s.config_path, "anna", "officer");
    let bert = add_officer(&s.config_path, "bert", "approver");
    let carl = add_officer(&s.config_path, "carl", "admin");
    let now = || s.clock.now_micros();
    let next_step = || s.clock.advance(chrono::Duration::seconds(30));

    // A day of traffic for the traffic page: the page's counts are sampled when it
    // is asked for, so an admin looks at it once an hour.
    let mut watcher = ConsoleClient::new(&s.admin);
    for hour in 0..24u32 {
        for i in 0..(3 + (hour * 7) % 11) {
            relay_one(&s, "acme", &format!("%2B316{:08}", 12_345_000 + i)).await;
        }
        assert!(
            watcher
                .log_in("carl", &totp_at(&carl, now()))
                .await
                .status
                .is_redirection()
        );
        assert!(watcher.get("/console/traffic").await.status.is_success());
        s.clock.advance(chrono::Duration::hours(1));
    }
    relay_one(&s, "acme", "%2B31612345678").await;
    s.running.settle().await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let downloads = work.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let shots = Shots {
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
    };
    std::fs::create_dir_all(&shots.dir).unwrap();
    let base = format!("https://127.0.0.1:{}", s.admin.addr.port());

    // Anna, an officer, logs in and opens a case.
    let a = browser(&d, &chromium, &work.path().join("anna"), &downloads).await;
    a.goto(&format!("{base}/console/")).await.unwrap();
    at(&a, "/console/login").await;
    shots.take(&a, "login").await;
    // The first Tab reaches the skip link: the page is usable from the keyboard.
    a.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{E004}")
        .await
        .unwrap();
    let focused = a
        .execute("return document.activeElement.className", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("skip"));
    log_in(&a, &base, "anna", &totp_at(&anna, now())).await;
    a.goto(&format!("{base}/console/cases/new")).await.unwrap();
    let today = s.clock.now().date_naive();
    for (id, value) in [
        ("authority", "Openbaar Ministerie".to_owned()),
        ("country", "nl".to_owned()),
        ("organisation", "OM-0042".to_owned()),
        ("request", "2026-0815".to_owned()),
        ("legal_basis", "Sv 126n".to_owned()),
        ("order_reference", "RC 26/1234".to_owned()),
        ("since", (today - chrono::Days::new(2)).to_string()),
        ("until", today.to_string()),
        ("recipient", "+31612345678".to_owned()),
    ] {
        fill(&a, id, &value).await;
    }
    // A date field's typing follows the browser's locale: its value is set instead.
    for (id, date) in [("order_date", "2026-11-20"), ("deadline", "2026-12-24")] {
        a.execute(
            "document.getElementById(arguments[0]).value = arguments[1]",
            vec![json!(id), json!(date)],
        )
        .await
        .unwrap();
    }
    shots.take(&a, "case-new").await;
    click(&a, "main form button[type=submit]").await;
    at(&a, "/console/cases/1").await;
    let page = a.source().await.unwrap();
    assert!(
        page.contains("class=\"state open\"") && page.contains("2026-12-24"),
        "{page}"
    );

    // Bert, an approver, approves it with password and a fresh code.
    let b = browser(&d, &chromium, &work.path().join("bert"), &downloads).await;
    log_in(&b, &base, "bert", &totp_at(&bert, now())).await;
    shots.take(&b, "cases").await;
    next_step();
    b.goto(&format!("{base}/console/cases/1")).await.unwrap();
    fill(&b, "note", "order checked against the register").await;
    fill(&b, "d-password", "bert-long-password").await;
    fill(&b, "d-totp", &totp_at(&bert, now())).await;
    click(&b, "#approve").await;
    at(&b, "/console/cases/1?done=approve").await;
    assert!(
        b.source()
            .await
            .unwrap()
            .contains("class=\"state approved\"")
    );

    // Anna discloses, then downloads the export, its manifest and its signature.
    next_step();
    a.goto(&format!("{base}/console/cases/1")).await.unwrap();
    fill(&a, "x-password", "anna-long-password").await;
    fill(&a, "x-totp", &totp_at(&anna, now())).await;
    click(&a, "#disclose-button").await;
    at(&a, "/console/cases/1?done=disclosed").await;
    shots.take(&a, "case-exports").await;
    let links = a
        .find_all(Locator::Css("ul.exports a[download]"))
        .await
        .unwrap();
    assert_eq!(links.len(), 3, "export, manifest, signature");
    let mut names = Vec::new();
    for link in &links {
        let href = link.attr("href").await.unwrap().unwrap();
        names.push(href.rsplit('/').next().unwrap().to_owned());
        link.click().await.unwrap();
    }
    // And the public key the note on verifying links to.
    click(&a, "a[href='/console/signing-key.pub']").await;
    let mut manifest = None;
    for name in &names {
        let path = downloaded(&downloads, name).await;
        if name.ends_with(".manifest.json") {
            manifest = Some(path);
        }
    }
    let key = downloaded(&downloads, "signing.key.pub").await;
    let manifest = manifest.expect("a manifest among the downloads");
    let (ok, out) = cli(
        &s.config_path,
        &[
            "verify-export",
            manifest.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "the downloads verify with the downloaded key: {out}");
    let export = std::fs::read_to_string(downloads.join(&names[0])).unwrap();
    assert!(
        export.contains("+31612345678"),
        "the case's record is in it"
    );
    a.goto(&format!("{base}/console/cases/1")).await.unwrap();
    shots.take(&a, "case").await;

    // Every other page, as an admin sees it.
    let c = browser(&d, &chromium, &work.path().join("carl"), &downloads).await;
    next_step();
    log_in(&c, &base, "carl", &totp_at(&carl, now())).await;
    for (path, name) in [
        ("/console/traffic", "traffic"),
        ("/console/subject", "subject"),
        ("/console/holds", "holds"),
        ("/console/audit", "audit"),
        ("/console/offboard", "offboard"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        shots.take(&c, name).await;
    }
    // At 200% zoom a 1280-pixel window is 640 CSS pixels wide: no page scrolls
    // sideways then (a wide table scrolls in its own box).
    c.set_window_size(640, 1100).await.unwrap();
    for path in [
        "/console/cases",
        "/console/cases/1",
        "/console/audit",
        "/console/officers",
        "/console/traffic",
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(overflow, json!(0), "{path} scrolls sideways at 640 px");
    }
    shots.take(&c, "traffic-narrow").await;
    c.set_window_size(1280, 1100).await.unwrap();
    // Enrolling an officer shows the otpauth URI as a QR code.
    c.goto(&format!("{base}/console/officers")).await.unwrap();
    next_step();
    fill(&c, "name", "dora").await;
    fill(&c, "new_password", "dora-long-password").await;
    fill(&c, "a-password", "carl-long-password").await;
    fill(&c, "a-totp", &totp_at(&carl, now())).await;
    click(&c, "#add-officer").await;
    let qr = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".qr svg"))
        .await
        .unwrap();
    let uri = c
        .find(Locator::Css("code.uri"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        uri.starts_with("otpauth://totp/relaylog:dora?secret="),
        "{uri}"
    );
    assert!(qr.attr("role").await.unwrap().as_deref() == Some("img"));
    shots.take(&c, "officers").await;

    for client in [a, b, c] {
        client.close().await.unwrap();
    }
    eprintln!("screenshots in {}", shots.dir.display());
}
