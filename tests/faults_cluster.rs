//! The cluster scenarios of FAULTS.md (`fault_NN_<what>`) on a real three-node JetStream
//! cluster of `nats-server` processes, one test at a time (each starts its own cluster).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda::prelude::*;
use eda::testing::{NatsCluster, TestApp};
use eda::PublishOptions;

#[event("ledger.posted")]
pub struct LedgerPosted {
    pub id: u64,
}

/// Side effects per event id.
#[derive(Default)]
pub struct Posted(Mutex<HashMap<u64, u32>>);

impl Posted {
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[handler(service = "faults-cluster")]
async fn post_entry(event: LedgerPosted, posted: State<Posted>) {
    *posted.0.lock().unwrap().entry(event.id).or_default() += 1;
}

/// Publishes `ids` one by one, each retried with its own event id until the broker stores it.
async fn publish_until_stored(app: &TestApp, ids: std::ops::Range<u64>) -> Vec<u64> {
    let publisher = app.publisher();
    let mut acked = Vec::new();
    for id in ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let options = PublishOptions::default().id(format!("entry-{id}"));
            match publisher.publish_with(&LedgerPosted { id }, options).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "entry {id} not stored within two minutes: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        acked.push(id);
    }
    acked
}

/// FAULTS #20: two of three nodes down is a lost quorum: every publish meanwhile fails as an
/// error (never a false Ok); once they are back publishing resumes and every event acked
/// before, during retries and after is handled (at least once: acks can fail in the outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_20_two_of_three_nodes_down_publishes_fail_as_errors_and_nothing_acked_is_lost() {
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let posted = Arc::new(Posted::default());
    // Connected to the first node only, which stays up: the outage is the quorum's, not the
    // connection's.
    // A freshly meshed cluster may not yet count every node as a JetStream peer ("no suitable
    // peers for placement"): the start is retried until the placement succeeds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let app = loop {
        let started = TestApp::builder("faults-cluster")
            .nats(cluster.node_url(0).unwrap())
            .configure(|b| b.ack_wait(Duration::from_secs(2)).stream_replicas(3))
            .shared_state(Arc::clone(&posted))
            .handlers(&["post_entry"])
            .start()
            .await;
        match started {
            Ok(app) => break app,
            Err(e) if e.to_string().contains("no suitable peers") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cluster never placed a stream on three peers: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the app starts on the cluster: {e}"),
        }
    };
    let mut acked = publish_until_stored(&app, 0..100).await;

    cluster.stop(1);
    cluster.stop(2);
    let publisher = app.publisher();
    for id in 100..103 {
        let options = PublishOptions::default().id(format!("entry-{id}"));
        let result = publisher.publish_with(&LedgerPosted { id }, options).await;
        assert!(
            result.is_err(),
            "entry {id} was confirmed without a quorum: {result:?}"
        );
    }

    cluster
        .restart_together(&[1, 2])
        .unwrap_or_else(|e| panic!("{e}"));
    // The entries refused during the outage are published again with their ids (the broker
    // drops a repeat of one that was stored after all), then more.
    acked.extend(publish_until_stored(&app, 100..200).await);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while posted.distinct() < acked.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acked entries handled after the quorum came back",
            posted.distinct(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.settle().await;
    let counts = posted.0.lock().unwrap().clone();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "acked but never handled: {missing:?}");
    assert_eq!(counts.len(), 200, "no phantoms");
    let stored = app.published::<LedgerPosted>().await.unwrap();
    assert_eq!(stored.len(), 200, "every entry stored once");
    assert!(app.dead_letters().await.unwrap().is_empty());
    app.shutdown().await.unwrap();
}
