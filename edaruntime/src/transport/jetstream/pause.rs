//! Pausing a handler's durable consumer on the server while its circuit breaker is open
//! ([`BreakerConfig::pause_consumer`](crate::breaker::BreakerConfig::pause_consumer),
//! `$JS.API.CONSUMER.PAUSE` of nats-server 2.11+), so that every instance of the service stops
//! at once. The breaker decides; this only tells the server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use super::JetStream;
use crate::breaker::Breaker;

/// How long one pause or resume request may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

impl JetStream {
    /// Whether the server can pause consumers (2.11 and later).
    pub(super) fn can_pause_consumers(&self) -> bool {
        at_least(&self.client.server_info().version, (2, 11))
    }

    /// Pauses `durable` on the server while `breaker` is open, and resumes it when the breaker
    /// leaves the open state. Runs until aborted.
    pub(super) async fn follow_breaker(self: Arc<Self>, breaker: Breaker, durable: String) {
        let mut changes = breaker.changes();
        let mut paused = false;
        loop {
            changes.borrow_and_update();
            let open = breaker.open_for_now(Instant::now());
            match open {
                Some(remaining) => {
                    self.pause(&durable, Some(SystemTime::now() + remaining))
                        .await;
                    paused = true;
                }
                None if paused => {
                    self.pause(&durable, None).await;
                    paused = false;
                }
                None => {}
            }
            // Tripped by hand, it is paused for `max_open_for` at a time: asked again then.
            let again = open.unwrap_or(Duration::MAX);
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = sleep(again) => {}
            }
        }
    }

    /// Pauses `durable` until `until`, or resumes it (`None`).
    async fn pause(&self, durable: &str, until: Option<SystemTime>) {
        let subject = format!(
            "$JS.API.CONSUMER.PAUSE.{}.{durable}",
            self.settings.topology.events_stream
        );
        let body = match until {
            Some(until) => serde_json::json!({
                "pause_until": humantime::format_rfc3339_nanos(until).to_string()
            }),
            None => serde_json::json!({}),
        };
        let request = self.client.request(subject, Bytes::from(body.to_string()));
        let what = if until.is_some() { "pause" } else { "resume" };
        let reply = match tokio::time::timeout(REQUEST_LIMIT, request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                tracing::warn!(consumer = durable, error = %e, "cannot {what} the consumer on the server; this instance stays paused by its breaker all the same");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    consumer = durable,
                    "the server did not answer the request to {what} the consumer"
                );
                return;
            }
        };
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        match answer.get("error") {
            Some(error) => {
                tracing::warn!(consumer = durable, %error, "the server refused to {what} the consumer")
            }
            None => {
                tracing::info!(consumer = durable, until = ?until.map(humantime::format_rfc3339_millis), "consumer {what}d on the server")
            }
        }
    }
}

async fn sleep(duration: Duration) {
    match Instant::now().checked_add(duration) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a server version such as `2.11.0` or `2.12.0-beta.1` is at least `wanted`.
fn at_least(version: &str, wanted: (u32, u32)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= wanted
}

#[cfg(test)]
mod tests {
    use super::at_least;

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert!(at_least("2.11.0", (2, 11)));
        assert!(at_least("2.15.1", (2, 11)));
        assert!(at_least("3.0.0", (2, 11)));
        assert!(!at_least("2.9.10", (2, 11)));
        assert!(!at_least("2.10.22-RC.1", (2, 11)));
        assert!(!at_least("", (2, 11)));
    }
}
