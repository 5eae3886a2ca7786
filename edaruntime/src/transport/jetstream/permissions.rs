//! Least privilege, generated: the NATS permissions one service needs, from what its handlers
//! consume and declare they emit, and nothing more.
//!
//! A service may publish its declared events (`emits = [..]` on handlers,
//! [`AppBuilder::emits`](crate::AppBuilder::emits) for publishers outside handlers), its own
//! dead letters (`dlq.<service>.>`), its own records in the processed-id bucket, the schemas of
//! the events compiled into it, and the JetStream API calls of its own durable consumers
//! (info, create, pull, ack; pause for handlers behind a breaker). It subscribes to
//! `_INBOX.>` only: pulled messages and every reply arrive there. Startup also may create the
//! streams and buckets when they are missing (`$JS.API.STREAM.CREATE.<name>`); a deployment
//! whose administrator provisions them can drop those lines.

use std::fmt;

use crate::aggregate::forward::FORWARDER;
use crate::config::Topology;
use crate::delivery::naming::Names;
use crate::registry::{Catalog, HandlerInfo};

/// A NATS `permissions { publish, subscribe }` block for one service; its `Display` is the
/// block as nats-server's configuration writes it (see [`permissions`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Permissions {
    /// The service.
    pub service: String,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Its handlers that declare no `emits`: they get no right to publish events (a handler
    /// that publishes needs `emits = [..]`).
    pub undeclared: Vec<String>,
    /// How many answers it may send to each request it receives (`allow_responses`), 0 for
    /// none: a service with projections answers `eda projections rebuild` twice (started,
    /// then done), to the asker's inbox only.
    #[serde(default)]
    pub allow_responses: u32,
}

/// The permissions service `service` needs with the default [`Topology`], from `catalog`
/// (e.g. [`App::catalog()`](crate::App::catalog)). Events published outside handlers are
/// only known to a built app: [`App::permissions`](crate::App::permissions) adds them.
///
/// ```
/// let block = eda::permissions(&eda::App::catalog(), "notifications");
/// assert!(block.subscribe.contains(&"_INBOX.>".to_owned()));
/// println!("{block}");
/// ```
pub fn permissions(catalog: &Catalog, service: &str) -> Permissions {
    permissions_for(catalog, service, &Topology::default(), None, &[], &[], &[])
}

/// The handlers of `catalog` that `service` runs (all of them, or those `only` names).
fn handlers_of<'c>(
    catalog: &'c Catalog,
    service: &'c str,
    only: Option<&'c [&'static str]>,
) -> impl Iterator<Item = &'c HandlerInfo> + 'c {
    catalog.handlers.iter().filter(move |h| {
        h.service.as_deref().is_none_or(|s| s == service)
            && only.is_none_or(|names| names.contains(&h.name.as_str()))
    })
}

/// What [`permissions`] computes, for a topology, a selection of handlers, the events a
/// service publishes outside its handlers, the aggregate types it stores and those its
/// projections read (event sourcing).
pub(crate) fn permissions_for(
    catalog: &Catalog,
    service: &str,
    topology: &Topology,
    only: Option<&[&'static str]>,
    emitted_outside_handlers: &[&'static str],
    aggregates: &[&'static str],
    projected: &[&'static str],
) -> Permissions {
    let t = topology;
    let api = "$JS.API";
    let mut publish = Vec::new();
    let mut undeclared = Vec::new();
    let mut emitted: Vec<&str> = emitted_outside_handlers.to_vec();
    for stream in [
        t.events_stream.clone(),
        t.dlq_stream.clone(),
        t.redrive_stream.clone(),
        format!("KV_{}", t.processed_bucket),
        format!("KV_{}", t.schemas_bucket),
    ] {
        publish.push(format!("{api}.STREAM.INFO.{stream}"));
        publish.push(format!("{api}.STREAM.CREATE.{stream}"));
    }
    // Processed ids, dead-letter decisions, hand-back counts and claims of its own handlers;
    // ids that a key cannot hold are hashed into one token (`$KV.<bucket>.*`).
    let processed = &t.processed_bucket;
    for prefix in ["", "back.", "dlq.", "claim."] {
        publish.push(format!("$KV.{processed}.{prefix}{service}.>"));
        publish.push(format!(
            "{api}.DIRECT.GET.KV_{processed}.$KV.{processed}.{prefix}{service}.>"
        ));
    }
    publish.push(format!("$KV.{processed}.*"));
    publish.push(format!("{api}.DIRECT.GET.KV_{processed}.$KV.{processed}.*"));
    publish.push(format!("{api}.STREAM.MSG.GET.KV_{processed}"));
    // Every event version compiled into the binary is registered at startup.
    let schemas = &t.schemas_bucket;
    for event in &catalog.events {
        let key = format!("{}.v{}", event.name, event.version);
        push_unique(&mut publish, format!("$KV.{schemas}.{key}"));
        push_unique(
            &mut publish,
            format!("{api}.DIRECT.GET.KV_{schemas}.$KV.{schemas}.{key}"),
        );
    }
    publish.push(format!("{api}.STREAM.MSG.GET.KV_{schemas}"));
    publish.push(format!("dlq.{service}.>"));
    for handler in handlers_of(catalog, service, only) {
        let names = Names::new(service, &handler.name);
        // Its consumer on the event stream, and the one of its redriven dead letters.
        for (stream, durable) in [
            (&t.events_stream, &names.durable),
            (&t.redrive_stream, &names.redrive_durable),
        ] {
            publish.push(format!("{api}.CONSUMER.INFO.{stream}.{durable}"));
            publish.push(format!("{api}.CONSUMER.CREATE.{stream}.{durable}.>"));
            publish.push(format!("{api}.CONSUMER.MSG.NEXT.{stream}.{durable}"));
            publish.push(format!("$JS.ACK.{stream}.{durable}.>"));
        }
        if handler.options.breaker.is_some() {
            let (stream, durable) = (&t.events_stream, &names.durable);
            publish.push(format!("{api}.CONSUMER.PAUSE.{stream}.{durable}"));
        }
        match &handler.emits {
            Some(names) => emitted.extend(names.iter().map(String::as_str)),
            None => undeclared.push(handler.name.clone()),
        }
    }
    publish.extend(aggregate_permissions(topology, aggregates));
    for subject in projection_permissions(topology, projected) {
        push_unique(&mut publish, subject);
    }
    let (mut control, mut allow_responses) = (Vec::new(), 0);
    if !projected.is_empty() {
        // Answering `eda projections rebuild`: its requests, and two answers to each.
        control.push(crate::aggregate::projection_rebuild_subject(service));
        allow_responses = 2;
        for subject in leases_permissions(topology, service) {
            push_unique(&mut publish, subject);
        }
    }
    emitted.sort_unstable();
    emitted.dedup();
    for event in emitted {
        publish.push(format!("{}.{event}", t.subject_prefix));
    }
    Permissions {
        service: service.to_owned(),
        publish,
        subscribe: [vec!["_INBOX.>".to_owned()], control].concat(),
        undeclared,
        allow_responses,
    }
}

/// The leases that let one instance of the service run each of its projections: the bucket
/// (created on first use) and the service's keys in it.
fn leases_permissions(t: &Topology, service: &str) -> Vec<String> {
    let (api, leases) = ("$JS.API", &t.leases_bucket);
    vec![
        format!("{api}.STREAM.INFO.KV_{leases}"),
        format!("{api}.STREAM.CREATE.KV_{leases}"),
        format!("{api}.STREAM.MSG.GET.KV_{leases}"),
        format!("{api}.DIRECT.GET.KV_{leases}.$KV.{leases}.{service}.>"),
        format!("$KV.{leases}.{service}.>"),
    ]
}

/// What storing aggregates of these types takes: each type's stream (created on first use),
/// appends to its subjects, reads by subject (message get, and a short-lived consumer for long
/// histories), the forwarder's durable consumer, and the type's keys in the snapshot bucket
/// (the forwarded events' subjects come with the declared events).
fn aggregate_permissions(t: &Topology, aggregates: &[&'static str]) -> Vec<String> {
    let api = "$JS.API";
    let mut publish = Vec::new();
    if aggregates.is_empty() {
        return publish;
    }
    let snapshots = &t.snapshots_bucket;
    publish.push(format!("{api}.STREAM.INFO.KV_{snapshots}"));
    publish.push(format!("{api}.STREAM.CREATE.KV_{snapshots}"));
    publish.push(format!("{api}.STREAM.MSG.GET.KV_{snapshots}"));
    for kind in aggregates {
        let stream = format!("{}{}", t.aggregate_stream_prefix, kind.to_ascii_uppercase());
        for subject in stream_reading(&stream) {
            push_unique(&mut publish, subject);
        }
        for subject in [
            // The forwarder's durable consumer (`eda_forward`): info, pull, acks.
            format!("{api}.CONSUMER.INFO.{stream}.{FORWARDER}"),
            format!("$JS.ACK.{stream}.{FORWARDER}.>"),
            format!("{}.{kind}.*", t.aggregate_subject_prefix),
            format!("$KV.{snapshots}.{kind}.*"),
            format!("{api}.DIRECT.GET.KV_{snapshots}.$KV.{snapshots}.{kind}.*"),
        ] {
            push_unique(&mut publish, subject);
        }
    }
    publish
}

/// What a projection reading an aggregate type's stream takes: the stream (created on first
/// use), a short-lived consumer of the whole stream, and reads by subject (an append begun
/// before the projection's position is read back).
fn projection_permissions(t: &Topology, projected: &[&'static str]) -> Vec<String> {
    let mut publish = Vec::new();
    for kind in projected {
        let stream = format!("{}{}", t.aggregate_stream_prefix, kind.to_ascii_uppercase());
        for subject in stream_reading(&stream) {
            push_unique(&mut publish, subject);
        }
    }
    publish
}

/// Reading an aggregate type's stream: provisioning it on first use, message gets by subject,
/// and short-lived consumers (pull, deleted after use).
fn stream_reading(stream: &str) -> [String; 6] {
    let api = "$JS.API";
    [
        format!("{api}.STREAM.INFO.{stream}"),
        format!("{api}.STREAM.CREATE.{stream}"),
        format!("{api}.STREAM.MSG.GET.{stream}"),
        format!("{api}.CONSUMER.CREATE.{stream}.>"),
        format!("{api}.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("{api}.CONSUMER.DELETE.{stream}.*"),
    ]
}

fn push_unique(subjects: &mut Vec<String>, subject: String) {
    if !subjects.contains(&subject) {
        subjects.push(subject);
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| format!("      \"{s}\""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        writeln!(
            f,
            "# NATS permissions of service `{}`, generated by eda",
            self.service
        )?;
        if !self.undeclared.is_empty() {
            writeln!(
                f,
                "# handlers without `emits = [..]` (no right to publish events): {}",
                self.undeclared.join(", ")
            )?;
        }
        writeln!(f, "permissions: {{")?;
        writeln!(
            f,
            "  publish: {{\n    allow: [\n{}\n    ]\n  }}",
            list(&self.publish)
        )?;
        writeln!(
            f,
            "  subscribe: {{\n    allow: [\n{}\n    ]\n  }}",
            list(&self.subscribe)
        )?;
        if self.allow_responses > 0 {
            writeln!(f, "  allow_responses: {{ max: {} }}", self.allow_responses)?;
        }
        write!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::HandlerOptions;
    use crate::registry::EventInfo;

    fn handler(name: &str, service: Option<&str>, emits: Option<&[&str]>) -> HandlerInfo {
        HandlerInfo {
            name: name.to_owned(),
            subject: "user.created".to_owned(),
            service: service.map(str::to_owned),
            event: None,
            options: HandlerOptions::default(),
            emits: emits.map(|e| e.iter().map(|s| (*s).to_owned()).collect()),
            module_path: "tests".to_owned(),
        }
    }

    #[test]
    fn a_service_gets_its_own_consumers_dead_letters_records_and_declared_events() {
        let catalog = Catalog {
            events: vec![EventInfo {
                name: "user.created".to_owned(),
                version: 2,
                type_name: "UserCreated".to_owned(),
                upcast_from: None,
                schema: serde_json::json!({}),
                fingerprint: "f".to_owned(),
            }],
            handlers: vec![
                handler("welcome", None, Some(&["welcome.sent", "mail.queued"])),
                handler("audit", Some("notifications"), None),
                handler("charge", Some("billing"), Some(&["payment.taken"])),
            ],
        };
        let p = permissions(&catalog, "notifications");
        for subject in [
            "$JS.API.CONSUMER.MSG.NEXT.EDA_EVENTS.notifications__welcome",
            "$JS.API.CONSUMER.CREATE.EDA_EVENTS.notifications__audit.>",
            "$JS.ACK.EDA_EVENTS.notifications__welcome.>",
            "$JS.API.CONSUMER.MSG.NEXT.EDA_REDRIVE.notifications__welcome__redrive",
            "$JS.ACK.EDA_REDRIVE.notifications__audit__redrive.>",
            "$JS.API.STREAM.INFO.EDA_REDRIVE",
            "events.welcome.sent",
            "events.mail.queued",
            "dlq.notifications.>",
            "$KV.EDA_PROCESSED.notifications.>",
            "$KV.EDA_SCHEMAS.user.created.v2",
            "$JS.API.STREAM.INFO.EDA_EVENTS",
        ] {
            assert!(p.publish.contains(&subject.to_owned()), "{subject} in {p}");
        }
        let text = p.to_string();
        assert!(
            !text.contains("billing"),
            "another service's consumer: {text}"
        );
        assert!(!text.contains("payment.taken"), "{text}");
        assert_eq!(p.subscribe, ["_INBOX.>"]);
        assert_eq!(p.undeclared, ["audit"]);
        assert!(
            text.contains("# handlers without `emits = [..]` (no right to publish events): audit")
        );
        assert!(
            text.contains("permissions: {\n  publish: {\n    allow: [\n"),
            "{text}"
        );
        assert!(!text.contains("AGG"), "no aggregates declared: {text}");
    }

    #[test]
    fn a_service_storing_aggregates_gets_their_streams_subjects_and_snapshots() {
        let catalog = Catalog {
            events: Vec::new(),
            handlers: Vec::new(),
        };
        let p = permissions_for(
            &catalog,
            "bank",
            &Topology::default(),
            None,
            &[],
            &["account"],
            &[],
        );
        for subject in [
            "$JS.API.STREAM.CREATE.EDA_AGG_ACCOUNT",
            "$JS.API.STREAM.MSG.GET.EDA_AGG_ACCOUNT",
            "$JS.API.CONSUMER.CREATE.EDA_AGG_ACCOUNT.>",
            "agg.account.*",
            "$KV.EDA_SNAPSHOTS.account.*",
            "$JS.API.STREAM.INFO.KV_EDA_SNAPSHOTS",
        ] {
            assert!(p.publish.contains(&subject.to_owned()), "{subject} in {p}");
        }
    }

    #[test]
    fn a_projection_reads_its_aggregate_stream_and_nothing_more() {
        let catalog = Catalog {
            events: Vec::new(),
            handlers: Vec::new(),
        };
        let p = permissions_for(
            &catalog,
            "reports",
            &Topology::default(),
            None,
            &[],
            &[],
            &["account"],
        );
        assert!(
            p.publish
                .contains(&"$JS.API.CONSUMER.CREATE.EDA_AGG_ACCOUNT.>".to_owned()),
            "{p}"
        );
        assert_eq!(p.subscribe, ["_INBOX.>", "eda.control.reports.rebuild"]);
        let text = p.to_string();
        assert!(!text.contains("agg.account"), "no appends: {text}");
        assert!(!text.contains("SNAPSHOTS"), "no snapshots: {text}");
    }
}
