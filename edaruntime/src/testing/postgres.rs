//! A real PostgreSQL server for tests ([`PostgresServer`]): Debian's server binaries, a
//! cluster made by `initdb` in a temporary directory, listening on a free loopback port (and a
//! socket in that directory), with trust authentication for user `eda`; killed and removed on
//! drop. Never the machine's own server on 5432.
//!
//! The binaries are those in `EDA_POSTGRES_BIN` (a directory), else the newest
//! `/usr/lib/postgresql/<version>/bin`, else `initdb` and `postgres` on `PATH`. Without them,
//! starting fails with a message saying how to install them. PostgreSQL refuses to run as
//! root: as root, the server runs as the `postgres` user (through `setpriv`).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::{free_port, TempDir};
use super::TestServerError;

/// How long `initdb` plus the server's start may take.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const HINT: &str = "install PostgreSQL's server binaries with `scripts/test` (it runs \
                    `apt-get install postgresql` when they are missing), or set EDA_POSTGRES_BIN \
                    to the directory holding `initdb` and `postgres`";

/// The directory holding `initdb` and `postgres`.
fn postgres_bin_dir() -> Result<PathBuf, TestServerError> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("EDA_POSTGRES_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if usable(&dir) {
            Ok(dir)
        } else {
            Err(TestServerError::NotInstalled(format!(
                "EDA_POSTGRES_BIN=`{}` holds no `initdb` and `postgres`: {HINT}",
                dir.display()
            )))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| usable(dir))
        .ok_or_else(|| {
            TestServerError::NotInstalled(format!(
                "no PostgreSQL server binaries (`initdb`, `postgres`) found: {HINT}"
            ))
        })
}

/// The user and group ids of `name`, from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let (_, uid, gid) = (fields.next()?, fields.next()?, fields.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// A PostgreSQL server of the test's own.
///
/// ```no_run
/// # fn demo() -> Result<(), eda::testing::TestServerError> {
/// let postgres = eda::testing::PostgresServer::start()?;
/// let config = postgres.connection_string(); // host=127.0.0.1 port=... user=eda dbname=postgres
/// # Ok(()) }
/// ```
pub struct PostgresServer {
    child: Child,
    port: u16,
    // Dropped after the child is killed (fields drop in order, after `Drop::drop`).
    dir: TempDir,
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("dir", &self.dir.0)
            .finish()
    }
}

impl PostgresServer {
    /// Makes a cluster with `initdb` and starts a server on it; returns once it accepts
    /// connections.
    pub fn start() -> Result<PostgresServer, TestServerError> {
        let bin = postgres_bin_dir()?;
        let dir = TempDir::new("postgres")?;
        let data = dir.0.join("data");
        let start_error = |what: &str, e: &dyn fmt::Display| {
            TestServerError::Start(format!("PostgreSQL test server: {what}: {e}"))
        };
        let as_root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let mut ids = None;
        if as_root {
            let found = user_ids("postgres").ok_or_else(|| {
                TestServerError::NotInstalled(format!(
                    "PostgreSQL refuses to run as root, and there is no `postgres` user to run it as: {HINT}"
                ))
            })?;
            std::os::unix::fs::chown(&dir.0, Some(found.0), Some(found.1))
                .map_err(|e| start_error("cannot hand the data directory to `postgres`", &e))?;
            ids = Some(found);
        }
        let command = |program: &str| {
            let path = bin.join(program);
            match ids {
                Some((uid, gid)) => {
                    let mut command = Command::new("setpriv");
                    command
                        .arg(format!("--reuid={uid}"))
                        .arg(format!("--regid={gid}"))
                        .arg("--clear-groups")
                        .arg(path);
                    command
                }
                None => Command::new(path),
            }
        };
        let initdb = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "eda", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| start_error("cannot run initdb", &e))?;
        if !initdb.status.success() {
            return Err(TestServerError::Start(format!(
                "PostgreSQL test server: initdb failed ({}): {}",
                initdb.status,
                String::from_utf8_lossy(&initdb.stderr).trim()
            )));
        }
        let port = free_port()?;
        let log_path = dir.0.join("server.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| start_error("cannot create the server log", &e))?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid))
                .map_err(|e| start_error("cannot hand the log to `postgres`", &e))?;
        }
        let stderr = log
            .try_clone()
            .map_err(|e| start_error("cannot open the server log", &e))?;
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&dir.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| start_error("cannot start postgres", &e))?;
        let mut server = PostgresServer { child, port, dir };
        server.wait_ready(&log_path)?;
        Ok(server)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<(), TestServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut log = String::new();
            if let Ok(mut file) = std::fs::File::open(log_path) {
                let _ = file.read_to_string(&mut log);
            }
            if log.contains("ready to accept connections") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestServerError::Start(format!(
                    "PostgreSQL test server exited ({status}) before it was ready: {}",
                    log.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(TestServerError::Start(format!(
                    "PostgreSQL test server not ready within {READY_TIMEOUT:?}: {}",
                    log.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on (loopback).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `tokio-postgres` or `libpq`: user `eda`, database `postgres`.
    pub fn connection_string(&self) -> String {
        format!("host=127.0.0.1 port={} user=eda dbname=postgres", self.port)
    }

    /// The same as a URL (`postgres://eda@127.0.0.1:<port>/postgres`).
    pub fn url(&self) -> String {
        format!("postgres://eda@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
