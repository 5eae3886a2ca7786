//! W3C trace context across handlers. A test binary of its own: `tracing` caches per call
//! site whether any subscriber is interested, and tests of other files hitting the same call
//! sites on other threads while this one installs its thread-local subscriber could leave that
//! cache saying "nobody" (it did, once, in CI).
#![allow(missing_docs, missing_debug_implementations)]

use std::sync::{Arc, Mutex};

use eda::prelude::*;
use eda::testing::TestApp;
use eda::PublishOptions;

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

/// Publishes `ObsFirst` (with `options`) through both handlers; returns the trace id of each
/// handler's span and the traceparent of each published event (first, then its follow-up).
async fn run_both(
    service: &str,
    options: PublishOptions,
) -> (Option<String>, Option<String>, Vec<Option<String>>) {
    let log = SpanLog::default();
    let _guard = tracing::subscriber::set_default(log.clone());
    let app = TestApp::builder(service)
        .handlers(&["obs_forward", "obs_receive"])
        .start()
        .await
        .unwrap();
    app.publisher()
        .publish_with(&ObsFirst { n: 1 }, options)
        .await
        .unwrap();
    app.settle().await;
    let spans = log.0.lock().unwrap().clone();
    let trace_of = |handler: &str| {
        spans
            .iter()
            .find(|(h, _)| h == handler)
            .map(|(_, t)| t.clone())
    };
    let published = app
        .published_raw()
        .await
        .unwrap()
        .iter()
        .map(|m| m.metadata().traceparent.clone())
        .collect();
    (trace_of("obs_forward"), trace_of("obs_receive"), published)
}

#[tokio::test(flavor = "current_thread")]
async fn a_handler_that_publishes_carries_the_trace_to_the_next_handler() {
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (first, second, published) =
        run_both("obs-trace", PublishOptions::default().traceparent(incoming)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736".to_owned();
    assert_eq!(first, Some(trace.clone()), "the first handler's span");
    assert_eq!(second, Some(trace), "one trace across both handlers");
    assert_eq!(published.len(), 2);
    let (event, follow_up) = (published[0].clone(), published[1].clone());
    assert!(
        event.is_some() && follow_up.is_some() && event != follow_up,
        "each event has a span id of its own: {published:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_root_event_outside_a_trace_carries_none_and_its_handler_starts_one() {
    let (first, second, published) = run_both("obs-untraced", PublishOptions::default()).await;
    assert_eq!(published.len(), 2);
    assert_eq!(published[0], None, "no trace on a root publish outside one");
    let started = published[1]
        .as_deref()
        .and_then(eda::observe::trace::trace_id)
        .map(str::to_owned);
    assert!(
        started.is_some(),
        "the follow-up carries a new trace: {published:?}"
    );
    assert_eq!(
        first, None,
        "the first handler's event came without a trace"
    );
    assert_eq!(
        second, started,
        "the next handler continues the started trace"
    );
}
