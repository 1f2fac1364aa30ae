//! A private PostgreSQL cluster for the benchmarks (`bench store --backend postgres`,
//! `bench query --backend postgres`): `initdb` and `pg_ctl` of the system's
//! PostgreSQL (Debian's `postgresql` package) in a fresh directory under the system's
//! temporary one, a Unix socket in it the only way in, durable as in production
//! (`fsync`, `synchronous_commit`, full-page writes), with the memory settings a
//! dedicated server would get. As root it runs as `nobody`. Stopped and removed when
//! dropped: a benchmark never touches a database it did not make.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Backend, PgConfig, StoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL is not installed (no initdb under `pg_config --bindir` or /usr/lib/postgresql): apt-get install postgresql"
    )]
    NotInstalled,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{program} failed: {output}")]
    Failed { program: String, output: String },
}

/// The server's settings beyond initdb's: durable, memory for a dedicated server of
/// this size, checkpoints spaced for a bulk load. Printed with the results.
pub const SETTINGS: &str = "shared_buffers = 1GB\nwork_mem = 16MB\nmaintenance_work_mem = 256MB\n\
wal_buffers = 64MB\nmax_wal_size = 8GB\ncheckpoint_timeout = 15min\n\
fsync = on\nsynchronous_commit = on\nfull_page_writes = on\nmax_files_per_process = 10000\n";

/// A running private cluster; stopped and removed when dropped.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// As root: the user (uid, gid) PostgreSQL runs as.
    user: Option<(u32, u32)>,
    password: String,
}

/// The directory with `initdb` and `pg_ctl`: `pg_config --bindir`, else the newest
/// under /usr/lib/postgresql. (The tests' private cluster finds it here too.)
pub fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    crate::store::keys::hex(&b)
}

impl Cluster {
    pub fn start() -> Result<Cluster, ClusterError> {
        let bin = bindir().ok_or(ClusterError::NotInstalled)?;
        // SAFETY: geteuid cannot fail.
        let user = (unsafe { libc::geteuid() } == 0).then_some((65534, 65534));
        let dir = std::env::temp_dir().join(format!("relaylog-bench-pg-{}", random_hex(8)));
        std::fs::create_dir(&dir)?;
        let cluster = Cluster {
            dir,
            bin,
            user,
            password: random_hex(16),
        };
        cluster.init()?;
        cluster.pg_ctl(
            &["start", "-w", "-t", "120", "-l"],
            Some(&cluster.path("log")),
        )?;
        Ok(cluster)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn give(&self, path: &Path) -> std::io::Result<()> {
        match self.user {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), ClusterError> {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(program));
        c.args(args).current_dir(&self.dir);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        let out = c.output()?;
        if !out.status.success() {
            return Err(ClusterError::Failed {
                program: program.into(),
                output: format!(
                    "{}{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(self.path("log")).unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) -> Result<(), ClusterError> {
        let data = self.path("data");
        let data = data.to_string_lossy().into_owned();
        let mut all = vec!["-D", &data];
        all.extend_from_slice(args);
        let log = log.map(|l| l.to_string_lossy().into_owned());
        if let Some(log) = &log {
            all.push(log);
        }
        self.run("pg_ctl", &all)
    }

    fn init(&self) -> Result<(), ClusterError> {
        self.give(&self.dir)?;
        let pwfile = self.path("pwfile");
        std::fs::write(&pwfile, &self.password)?;
        self.give(&pwfile)?;
        let data = self.path("data");
        self.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "relaylog",
                "--pwfile",
                &pwfile.to_string_lossy(),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        std::fs::remove_file(&pwfile)?;
        let conf = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\n{SETTINGS}",
            self.dir.display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf"))?;
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text)?;
        std::fs::write(data.join("pg_hba.conf"), "local all all scram-sha-256\n")?;
        Ok(())
    }

    /// `store` pointed at this cluster as node `bench`, its keys under the cluster's
    /// directory, the database initialised (`relaylog init`'s steps).
    pub fn store(&self, store: &StoreConfig) -> Result<StoreConfig, crate::store::OpenError> {
        let keys = self.path("keys");
        crate::store::keys::create_private_dir(&keys).map_err(|source| {
            crate::store::OpenError::Dir {
                path: keys.clone(),
                source,
            }
        })?;
        let password = self.path("relaylog-password");
        std::fs::write(&password, format!("{}\n", self.password)).map_err(|source| {
            crate::store::OpenError::Dir {
                path: password.clone(),
                source,
            }
        })?;
        let mut cfg = store.clone();
        cfg.master_key = keys.join("master.key");
        cfg.signing_key = keys.join("signing.key");
        cfg.keyring = keys.join("keyring");
        cfg.path = self.path("store");
        cfg.ledger = self.path("ledger.sqlite");
        let pg = PgConfig {
            url: format!("host={} user=relaylog dbname=postgres", self.dir.display()),
            password_file: Some(password),
            ca_file: None,
            pool_size: 4,
            node: "bench".into(),
            connect_timeout: std::time::Duration::from_secs(10),
            journal: false,
        };
        cfg.backend = Backend::Postgres(pg.clone());
        crate::store::init_keys(&cfg)?;
        crate::store::pgstore::init(&cfg, &pg, chrono::Utc::now().timestamp_micros())?;
        Ok(cfg)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "fast", "-w"], None);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
