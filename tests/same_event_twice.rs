//! Two event types of one name and version with different schemas in one binary. Events
//! register per binary (`inventory`), so this is a test binary of its own: in any other, every
//! app would fail to build.
#![allow(missing_docs, missing_debug_implementations)]

use eda::prelude::*;
use eda::testing::NatsServer;
use eda::{App, ErrorKind, Event};

mod depot {
    use eda::prelude::*;

    #[event("parcel.sent")]
    pub struct ParcelSent {
        pub id: u64,
    }

    /// The same shape as `ParcelSent` under another name: one schema, no problem.
    #[event("parcel.kept")]
    pub struct ParcelKept {
        pub id: u64,
    }
}

mod courier {
    use eda::prelude::*;

    /// `parcel.sent` v1 again, with a field more.
    #[event("parcel.sent")]
    pub struct ParcelSent {
        pub id: u64,
        pub courier: String,
    }

    /// `parcel.kept` v1 again, renamed but of the same shape.
    #[event("parcel.kept")]
    pub struct Kept {
        pub id: u64,
    }
}

#[handler(service = "same-event-twice")]
async fn record_parcel(_event: depot::ParcelSent) {}

/// The one problem this binary has.
fn expected() -> String {
    format!(
        "event `parcel.sent` v1 has different schemas in this binary: `same_event_twice::courier::ParcelSent` (fingerprint `{}`) and `same_event_twice::depot::ParcelSent` (fingerprint `{}`); one name and version have one schema: give one of them another version (or another name)",
        courier::ParcelSent::fingerprint(),
        depot::ParcelSent::fingerprint(),
    )
}

fn problems(result: eda::Result<impl std::fmt::Debug>) -> Vec<String> {
    match result {
        Err(e) if e.kind() == ErrorKind::Startup => e.problems().to_vec(),
        Err(other) => panic!("expected a startup error, got {other}"),
        Ok(app) => panic!("expected a startup error, but {app:?} built"),
    }
}

#[test]
fn two_types_of_one_name_and_version_with_different_schemas_stop_the_build_naming_both() {
    assert_ne!(
        depot::ParcelSent::fingerprint(),
        courier::ParcelSent::fingerprint()
    );
    assert_eq!(
        depot::ParcelKept::fingerprint(),
        courier::Kept::fingerprint()
    );
    assert_eq!(
        problems(App::builder("same-event-twice").without_env().build()),
        [expected()],
        "in memory too, and the two types of one shape are no problem"
    );
    assert_eq!(
        problems(
            App::builder("same-event-twice")
                .without_env()
                .handlers(&[])
                .build()
        ),
        [expected()],
        "for a service that runs no handler of it too: the binary registers every schema"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_the_clash_stops_startup_before_anything_is_registered() {
    let server = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        App::builder("same-event-twice")
            .nats(server.url())
            .without_env()
            .start(),
    )
    .await
    .expect("a startup that fails returns");
    assert_eq!(problems(started), [expected()]);
    let js = async_nats::jetstream::new(
        async_nats::connect(server.url())
            .await
            .expect("a plain client connects"),
    );
    assert!(
        js.get_key_value("EDA_SCHEMAS").await.is_err(),
        "nothing was provisioned, no schema registered"
    );
}
