//! The Prometheus exporter and the small HTTP listener serving `/metrics`, `/healthz` and
//! `/readyz`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::names::*;

/// The Prometheus recorder eda installed for this process, if it could (`None` when the
/// application installed a recorder of its own first).
pub(crate) fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = [
                (HANDLER_DURATION, HANDLER_DURATION_BUCKETS),
                (EVENT_LAG, EVENT_LAG_BUCKETS),
                (PUBLISH_DURATION, PUBLISH_DURATION_BUCKETS),
            ]
            .into_iter()
            .try_fold(builder, |b, (name, buckets)| {
                b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot configure the Prometheus exporter");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::info!("a metrics recorder is already installed: eda records into it and serves no /metrics");
                    None
                }
            }
        })
        .clone()
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the broker connection is up.
    pub connected: bool,
    /// Handlers whose consumer is not bound yet (or lost).
    pub unbound: Vec<String>,
    /// Circuit breakers open now (listed; they do not make the app unready).
    pub open_breakers: Vec<String>,
}

impl Readiness {
    /// Ready: connected and every consumer bound.
    pub fn is_ready(&self) -> bool {
        self.connected && self.unbound.is_empty()
    }

    fn body(&self) -> String {
        serde_json::json!({
            "ready": self.is_ready(),
            "broker_connected": self.connected,
            "consumers_not_bound": self.unbound,
            "open_breakers": self.open_breakers,
        })
        .to_string()
    }
}

/// Something that knows whether the app is ready.
pub(crate) type ReadinessProbe = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    ready: ReadinessProbe,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request))
                .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let line = String::from_utf8_lossy(&request[..read]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, content_type, body) = respond(path, metrics.as_ref(), &ready);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn respond(
    path: &str,
    metrics: Option<&PrometheusHandle>,
    ready: &ReadinessProbe,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match path {
        "/metrics" => match metrics {
            Some(handle) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            ),
            None => (
                "404 Not Found",
                TEXT,
                "metrics go to the application's own recorder\n".to_owned(),
            ),
        },
        "/healthz" => ("200 OK", TEXT, "ok\n".to_owned()),
        "/readyz" => {
            let readiness = ready();
            let status = if readiness.is_ready() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, JSON, readiness.body())
        }
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Binds the metrics address; `SocketAddr` with port 0 picks a free port.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_not_ready() {
        let r = Readiness {
            connected: false,
            unbound: vec!["billing__charge".into()],
            open_breakers: vec![],
        };
        assert!(!r.is_ready());
        assert_eq!(
            r.body(),
            r#"{"broker_connected":false,"consumers_not_bound":["billing__charge"],"open_breakers":[],"ready":false}"#
        );
        let probe: ReadinessProbe = Arc::new(|| Readiness {
            connected: true,
            unbound: vec![],
            open_breakers: vec!["smtp".into()],
        });
        let (status, _, body) = respond("/readyz", None, &probe);
        assert_eq!(status, "200 OK", "an open breaker leaves the process ready");
        assert!(body.contains(r#""open_breakers":["smtp"]"#), "{body}");
        assert_eq!(respond("/healthz", None, &probe).0, "200 OK");
        assert_eq!(respond("/metrics", None, &probe).0, "404 Not Found");
    }

    #[test]
    fn bucket_bounds_increase() {
        for buckets in [
            HANDLER_DURATION_BUCKETS,
            EVENT_LAG_BUCKETS,
            PUBLISH_DURATION_BUCKETS,
        ] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(HANDLER_DURATION_BUCKETS.first(), Some(&0.0001));
        assert_eq!(HANDLER_DURATION_BUCKETS.last(), Some(&60.0));
    }
}
