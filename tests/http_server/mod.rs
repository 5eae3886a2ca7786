//! A real HTTP/1.1 server (hyper) on a free loopback port for the actions tests: it records
//! every request and answers as the test scripts it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// What the server answers: status, headers, body, and how long it waits first.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            ..Answer::status(status)
        }
    }

    pub fn body(mut self, body: &str) -> Answer {
        self.body = body.to_owned();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(&Request, usize) -> Answer + Send + Sync;

/// The server; stops when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Starts on a free loopback port; `script` gets each request and how many requests
    /// with the same path came before it.
    pub async fn start(
        script: impl Fn(&Request, usize) -> Answer + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        HttpServer::serve(listener, script)
    }

    /// Serves on an already bound listener (a port chosen before the server is up).
    pub fn serve(
        listener: TcpListener,
        script: impl Fn(&Request, usize) -> Answer + Send + Sync + 'static,
    ) -> HttpServer {
        let addr = listener.local_addr().expect("bound");
        let requests: Arc<Mutex<Vec<Request>>> = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let task = tokio::spawn({
            let requests = Arc::clone(&requests);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let requests = Arc::clone(&requests);
                    let script = Arc::clone(&script);
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                let requests = Arc::clone(&requests);
                                let script = Arc::clone(&script);
                                async move {
                                    let (parts, body) = request.into_parts();
                                    let body = body
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    let seen = Request {
                                        method: parts.method.to_string(),
                                        path: parts.uri.to_string(),
                                        headers: parts
                                            .headers
                                            .iter()
                                            .map(|(k, v)| {
                                                (
                                                    k.as_str().to_owned(),
                                                    v.to_str().unwrap_or("").to_owned(),
                                                )
                                            })
                                            .collect(),
                                        body: String::from_utf8_lossy(&body).into_owned(),
                                        at: Instant::now(),
                                    };
                                    let before = {
                                        let mut all = requests.lock().unwrap();
                                        let before =
                                            all.iter().filter(|r| r.path == seen.path).count();
                                        all.push(seen.clone());
                                        before
                                    };
                                    let answer = script(&seen, before);
                                    tokio::time::sleep(answer.delay).await;
                                    let mut response =
                                        hyper::Response::builder().status(answer.status);
                                    for (name, value) in &answer.headers {
                                        response = response.header(name, value);
                                    }
                                    Ok::<_, Infallible>(
                                        response
                                            .body(Full::new(Bytes::from(answer.body)))
                                            .expect("a response"),
                                    )
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        HttpServer {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
