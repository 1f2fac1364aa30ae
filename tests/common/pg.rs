//! A private PostgreSQL cluster for tests: `initdb` and `pg_ctl` from the system's
//! PostgreSQL (Debian's `postgresql` package), in a temporary directory, on a free
//! loopback port, TLS only (a certificate made here), one password-authenticated role.
//! As root (CI) it runs as `nobody`, since PostgreSQL refuses to run as root. Stopped
//! and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The role the tests connect as.
pub const ROLE: &str = "relaylog";

pub struct Cluster {
    /// The data directory and socket, removed on drop.
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// As root: the user (uid, gid) PostgreSQL runs as.
    user: Option<(u32, u32)>,
    pub port: u16,
    pub password: String,
    /// The server's certificate, for a client to trust.
    pub cert: rcgen::CertifiedKey<rcgen::KeyPair>,
}

/// The directory with `initdb` and `pg_ctl` (as the benchmarks' cluster finds it).
fn bindir() -> Option<PathBuf> {
    relaylog::bench::pgcluster::bindir()
}

impl Cluster {
    /// A running cluster, or `None` (with a message) when PostgreSQL is not installed;
    /// under `CI=true` that fails the test instead.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = bindir() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed (apt-get install postgresql): CI must run this test"
            );
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        // SAFETY: geteuid cannot fail.
        let user = (unsafe { libc::geteuid() } == 0).then_some((65534, 65534));
        let dir = tempfile::tempdir().unwrap();
        let password = super::random_token(24);
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let cluster = Cluster {
            port: super::free_port(),
            dir,
            bin,
            user,
            password,
            cert,
        };
        cluster.init();
        cluster.pg_ctl(
            &["start", "-w", "-t", "60", "-l"],
            Some(&cluster.path("log")),
        );
        Some(cluster)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a PostgreSQL program as the cluster's user.
    fn run(&self, program: &str, args: &[&str]) {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(program));
        c.args(args).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.path("log")).unwrap_or_default()
        );
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) {
        let data = self.path("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        if let Some(log) = log {
            all.push(log.to_str().unwrap());
        }
        self.run("pg_ctl", &all);
    }

    /// initdb, TLS files, a configuration that takes TLS connections only.
    fn init(&self) {
        use std::os::unix::fs::PermissionsExt;
        let give = |path: &Path| {
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        };
        give(self.dir.path());
        let pwfile = self.path("pwfile");
        std::fs::write(&pwfile, &self.password).unwrap();
        give(&pwfile);
        let data = self.path("data");
        self.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                ROLE,
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-instructions",
            ],
        );
        std::fs::remove_file(&pwfile).unwrap();
        for (name, pem) in [
            ("server.crt", self.cert.cert.pem()),
            ("server.key", self.cert.signing_key.serialize_pem()),
        ] {
            let path = data.join(name);
            std::fs::write(&path, pem).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            give(&path);
        }
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nfsync = off\nshared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
            self.port,
            self.dir.path().display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        // TLS, a password, loopback: nothing else gets in.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
    }

    /// A libpq-style connection string (without the password).
    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={ROLE} dbname={database} sslmode=require",
            self.port
        )
    }

    /// Stops the server at once (`immediate`: as a crash would), until [`Cluster::resume`].
    pub fn halt(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"], None);
    }

    /// Starts the server again after [`Cluster::halt`], on the same port and data.
    pub fn resume(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&self.path("log")));
    }

    /// A blocking client on `database`, as the superuser the cluster was made with (not
    /// on a runtime's thread: in `spawn_blocking` from async tests).
    pub fn client(&self, database: &str) -> postgres::Client {
        let mut config: postgres::Config = self.url(database).parse().unwrap();
        config.password(self.password.as_bytes());
        config.connect(self.tls()).unwrap()
    }

    /// Runs statements on `database` as the superuser, from any thread (async tests).
    pub fn batch(&self, database: &str, sql: &str) {
        std::thread::scope(|s| {
            s.spawn(|| self.client(database).batch_execute(sql).unwrap())
                .join()
                .unwrap()
        });
    }

    /// The `[store]` lines that put node `node`'s records into `database` (made if it
    /// is not there yet): the URL, and the password and CA files written under `dir`.
    /// Callable from async tests too (the blocking client runs on a thread of its own).
    pub fn store_lines(&self, dir: &Path, database: &str, node: &str) -> String {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut admin = self.client("postgres");
                let exists = admin
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
                    .unwrap()
                    .is_some();
                if !exists {
                    // An identifier, not a value: it cannot be a parameter. Test names only.
                    assert!(
                        database
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    );
                    admin
                        .batch_execute(&format!("CREATE DATABASE {database}"))
                        .unwrap();
                }
            })
            .join()
            .unwrap()
        });
        let password = dir.join(format!("pg-password-{node}"));
        std::fs::write(&password, format!("{}\n", self.password)).unwrap();
        let ca = dir.join("pg-ca.pem");
        std::fs::write(&ca, self.cert.cert.pem()).unwrap();
        format!(
            "backend = \"postgres\"\nurl = \"{}\"\npassword-file = \"{}\"\nca-file = \"{}\"\nnode = \"{node}\"\n",
            self.url(database),
            password.display(),
            ca.display()
        )
    }

    /// A rustls connector (ring) trusting this cluster's certificate only.
    pub fn tls(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    }
}

/// The cluster this test binary's suites share when run on PostgreSQL (see
/// `common::on_postgres`): started at first use, stopped and removed once the process
/// is gone, however it ends (a watchdog, [`Cluster::watch`]). Fails the test when
/// PostgreSQL is not installed.
pub fn shared() -> &'static Cluster {
    static SHARED: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        assert!(
            bindir().is_some(),
            "RELAYLOG_TEST_BACKEND=postgres: PostgreSQL is not installed (apt-get install postgresql)"
        );
        let cluster = Cluster::start().unwrap();
        cluster.watch();
        cluster
    })
}

impl Cluster {
    /// Starts a watchdog that stops the cluster and removes its directory when this
    /// process ends, by exit, panic, signal or `kill -9`: a shell in a process group
    /// of its own, reading a pipe whose writing end only this process holds (never
    /// closed here, so only the process's end closes it). Never waited for: it
    /// outlives this process by design, and is reaped by init.
    #[allow(clippy::zombie_processes)]
    fn watch(&self) {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "read _; '{}' -D '{}' stop -m immediate -w >/dev/null 2>&1; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.path("data").display(),
            self.dir.path().display()
        );
        let mut c = Command::new("sh");
        c.args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .current_dir(self.dir.path())
            .process_group(0);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        let mut watchdog = c.spawn().unwrap();
        std::mem::forget(watchdog.stdin.take());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// Stops the server at once (the data is thrown away after).
    fn stop(&self) {
        let data = self.path("data");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "stop",
                    "-m",
                    "immediate",
                    "-w",
                ],
            );
        }));
    }
}
