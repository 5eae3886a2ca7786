//! What several test files share: the two rigs every delivery behaviour runs on, and a plain
//! HTTP GET for the metrics listener.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use eda::testing::{NatsServer, TestApp, TestAppBuilder};
use eda::MemoryBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where a test runs: an in-memory broker, or a `nats-server` of its own (with a 1 s ack wait,
/// so lost acks and cut-off handlers come back quickly).
pub enum Rig {
    Memory(MemoryBroker),
    Nats(NatsServer),
}

impl Rig {
    pub fn memory() -> Rig {
        Rig::Memory(MemoryBroker::new().with_retention(usize::MAX))
    }

    pub fn nats() -> Rig {
        Rig::Nats(NatsServer::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// A test app of `service` on this rig's broker.
    pub fn app(&self, service: &str) -> TestAppBuilder {
        match self {
            Rig::Memory(broker) => TestApp::builder(service).broker(broker.clone()),
            Rig::Nats(server) => TestApp::builder(service)
                .nats(server.url())
                .configure(|b| b.ack_wait(Duration::from_secs(1))),
        }
    }

    /// Another broker of the same kind (durable consumers outlive their apps).
    pub fn fresh(&self) -> Rig {
        if self.is_nats() {
            Rig::nats()
        } else {
            Rig::memory()
        }
    }

    pub fn is_nats(&self) -> bool {
        matches!(self, Rig::Nats(_))
    }
}

/// Runs `async fn $name(rig: Rig)` as `$name::memory` (paused clock) and `$name::jetstream`.
/// Watermill's universal suite, eda's way: every delivery behaviour is written once.
#[macro_export]
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                super::$name(super::Rig::memory()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jetstream() {
                super::$name(super::Rig::nats()).await
            }
        }
    )*};
}

/// `GET path` over a plain TCP connection: (status code, body); status 0 when the listener
/// cannot be reached.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A `nats-server` of its own with two users: `admin` (password `admin`), allowed everything,
/// and `user` (its password is its name), held to exactly `block` — for the least-privilege
/// tests. Its configuration file is removed with it.
pub struct RestrictedServer {
    pub server: NatsServer,
    dir: std::path::PathBuf,
}

impl RestrictedServer {
    pub fn start(user: &str, block: &eda::Permissions) -> RestrictedServer {
        let dir = std::env::temp_dir().join(format!(
            "eda-permissions-{user}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let config = dir.join("server.conf");
        std::fs::write(
            &config,
            format!("authorization: {{\n  users: [\n    {{ user: admin, password: admin }}\n    {{ user: {user}, password: {user}\n{block}\n    }}\n  ]\n}}\n"),
        )
        .expect("write the server configuration");
        let server = NatsServer::start_with_args(&["-c", &config.to_string_lossy()])
            .unwrap_or_else(|e| panic!("{e}"));
        RestrictedServer { server, dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

impl Drop for RestrictedServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
