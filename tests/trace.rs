//! W3C trace context across handlers. A test binary of its own: `tracing` caches per call
//! site whether any subscriber is interested, and tests of other files hitting the same call
//! sites on other threads while this one installs its thread-local subscriber could leave that
//! cache saying "nobody" (it did, once, in CI).
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::{Arc, Mutex};

use eda::prelude::*;
use eda::testing::TestApp;

#[event("obs.first")]
pub struct ObsFirst {
    pub n: u64,
}

#[event("obs.second")]
pub struct ObsSecond {
    pub n: u64,
}

#[handler]
async fn obs_forward(event: ObsFirst, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&ObsSecond { n: event.n }).await?;
    Ok(())
}

#[handler]
async fn obs_receive(_event: ObsSecond) {}

/// Records the `trace_id` and `handler` fields of every `eda.handle` span.
#[derive(Default, Clone)]
struct SpanLog(Arc<Mutex<Vec<(String, String)>>>);

struct Fields(Option<String>, Option<String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "trace_id" => self.0 = Some(value.to_owned()),
            "handler" => self.1 = Some(value.to_owned()),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, format!("{value:?}").trim_matches('"'));
    }
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        if span.metadata().name() == "eda.handle" {
            let mut fields = Fields(None, None);
            span.record(&mut fields);
            if let (Some(trace), Some(handler)) = (fields.0, fields.1) {
                self.0.lock().unwrap().push((handler, trace));
            }
        }
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn a_handler_that_publishes_carries_the_trace_to_the_next_handler() {
    let log = SpanLog::default();
    let _guard = tracing::subscriber::set_default(log.clone());
    let app = TestApp::builder("obs-trace")
        .handlers(&["obs_forward", "obs_receive"])
        .start()
        .await
        .unwrap();
    app.publish(&ObsFirst { n: 1 }).await.unwrap();
    app.settle().await;
    let spans = log.0.lock().unwrap().clone();
    let trace_of = |handler: &str| {
        spans
            .iter()
            .find(|(h, _)| h == handler)
            .map(|(_, t)| t.clone())
    };
    let first = trace_of("obs_forward").expect("a span for the first handler");
    assert_eq!(first.len(), 32, "a W3C trace id: {first}");
    assert_eq!(
        trace_of("obs_receive"),
        Some(first),
        "one trace across both handlers: {spans:?}"
    );
    let published = app.published_raw().await.unwrap();
    let headers: Vec<&str> = published
        .iter()
        .filter_map(|m| m.metadata().traceparent.as_deref())
        .collect();
    assert_eq!(headers.len(), 2);
    assert_ne!(
        headers[0], headers[1],
        "each event has a span id of its own"
    );
}
