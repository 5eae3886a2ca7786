//! The cluster scenarios of FAULTS.md (`fault_NN_<what>`) on a real three-node JetStream
//! cluster of `nats-server` processes, one test at a time (each starts its own cluster and
//! takes [`SERIAL`] first).
//!
//! Bookkeeping as the plan says: `attempted` (publish called) and `acked` (publish returned
//! Ok) in [`Sent`], `handled` (the side effect, per id) in [`Posted`], `dlq` from the app's
//! dead letters. After the faults heal and the load drains: nothing lost
//! (`acked ⊆ handled ∪ dlq`) and no phantoms (`handled ∪ dlq ⊆ attempted`).
#![allow(missing_docs, missing_debug_implementations)]

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use eda::prelude::*;
use eda::testing::{NatsCluster, TestApp, TestAppBuilder};
use eda::PublishOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Every test here runs three `nats-server` processes: on two cores, one test at a time. Each
/// takes this lock first (a failing test releases it as it unwinds).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVICE: &str = "faults-cluster";
const EVENTS_STREAM: &str = "EDA_EVENTS";
/// How long any wait on the cluster may take on a noisy machine; the tests never assert on
/// elapsed time.
const PATIENCE: Duration = Duration::from_secs(120);

#[event("ledger.posted")]
pub struct LedgerPosted {
    pub id: u64,
}

/// Side effects per event id (`handled`).
#[derive(Default)]
pub struct Posted(Mutex<HashMap<u64, u32>>);

impl Posted {
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn counts(&self) -> HashMap<u64, u32> {
        self.0.lock().unwrap().clone()
    }

    fn post(&self, id: u64) {
        *self.0.lock().unwrap().entry(id).or_default() += 1;
    }
}

/// What the test sent: `attempted` (publish called at least once) and `acked` (a publish
/// returned Ok), in order.
#[derive(Default)]
pub struct Sent {
    attempted: Mutex<BTreeSet<u64>>,
    acked: Mutex<Vec<u64>>,
}

impl Sent {
    fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn attempted(&self) -> BTreeSet<u64> {
        self.attempted.lock().unwrap().clone()
    }
}

#[handler(service = "faults-cluster")]
async fn post_entry(event: LedgerPosted, posted: State<Posted>) {
    posted.post(event.id);
}

/// Publishes `ids` one by one, `pace` apart, each retried with its own event id until the
/// broker stores it.
async fn publish_until_stored(publisher: &Publisher, ids: Range<u64>, pace: Duration, sent: &Sent) {
    for id in ids {
        sent.attempted.lock().unwrap().insert(id);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let options = PublishOptions::default().id(format!("entry-{id}"));
            match publisher.publish_with(&LedgerPosted { id }, options).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "entry {id} not stored within {PATIENCE:?}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        sent.acked.lock().unwrap().push(id);
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}

/// Calls `probe` until it returns Ok (its value), every 100 ms for at most [`PATIENCE`]; then
/// fails with `what` and the last answer.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {PATIENCE:?}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the app `make` builds. A freshly meshed cluster may not yet count every node as a
/// JetStream peer ("no suitable peers for placement"): the start is retried until the
/// placement succeeds.
async fn start_on_cluster(make: impl Fn() -> TestAppBuilder) -> TestApp {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match make().start().await {
            Ok(app) => return app,
            Err(e) if e.to_string().contains("no suitable peers") => {
                assert!(
                    Instant::now() < deadline,
                    "the cluster never placed a stream on three peers: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the app starts on the cluster: {e}"),
        }
    }
}

/// A plain client of the whole cluster (it follows the nodes as they go and come back), to
/// ask for stream and consumer info.
async fn plain_client(cluster: &NatsCluster) -> async_nats::Client {
    let options = async_nats::ConnectOptions::new()
        .name("faults-cluster-observer")
        .max_reconnects(None);
    let servers: Vec<async_nats::ServerAddr> = cluster
        .url()
        .split(',')
        .map(|u| u.parse().expect("a node URL"))
        .collect();
    options
        .connect(servers)
        .await
        .unwrap_or_else(|e| panic!("a plain client connects to the cluster: {e}"))
}

/// Node index of the server named `nN` (the cluster's names are `n1`..`n3`).
fn node_index(server_name: &str) -> Option<usize> {
    server_name
        .strip_prefix('n')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// The node that leads the events stream, from stream info (which the leader answers).
async fn stream_leader(js: &jetstream::Context) -> Result<usize, String> {
    let mut stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.as_deref())
        .and_then(node_index)
        .ok_or_else(|| format!("no stream leader: {:?}", info.cluster))
}

/// The node that leads the durable consumer `durable` of the events stream.
async fn consumer_leader(js: &jetstream::Context, durable: &str) -> Result<usize, String> {
    let info = consumer_info(js, durable).await?;
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.as_deref())
        .and_then(node_index)
        .ok_or_else(|| format!("no leader of consumer `{durable}`: {:?}", info.cluster))
}

async fn consumer_info(
    js: &jetstream::Context,
    durable: &str,
) -> Result<jetstream::consumer::Info, String> {
    js.get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| format!("stream info: {e}"))?
        .consumer_info(durable)
        .await
        .map_err(|e| format!("consumer info of `{durable}`: {e}"))
}

/// `GET <path>` on a node's monitoring endpoint (`http://127.0.0.1:<port>`), as JSON.
async fn monitor_get(base: &str, path: &str) -> Result<serde_json::Value, String> {
    let address = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{base}` is not an http:// URL"))?
        .to_owned();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("{base}{path}: no answer within 5 s"))?
        .map_err(|e| format!("{base}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{base}{path}: no HTTP body"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(format!("{base}{path}: {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{base}{path}: {e}"))
}

/// Whether the node at monitoring endpoint `base` lists a client connection of this service
/// (eda names its connection after the service).
async fn service_connected(base: &str) -> Result<bool, String> {
    let connz = monitor_get(base, "/connz").await?;
    Ok(connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == SERVICE))
}

/// Node `index`'s own copy of stream `name` (`/jsz` reports every replica's local state, a
/// follower's too): `(messages, last_seq)`.
async fn node_stream_state(
    cluster: &NatsCluster,
    index: usize,
    name: &str,
) -> Result<(u64, u64), String> {
    let base = cluster.monitor_url(index).expect("a node of the cluster");
    let jsz = monitor_get(&base, "/jsz?accounts=true&streams=true").await?;
    let accounts = jsz["account_details"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for account in &accounts {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            if stream["name"] == name {
                let state = &stream["state"];
                return match (state["messages"].as_u64(), state["last_seq"].as_u64()) {
                    (Some(messages), Some(last)) => Ok((messages, last)),
                    _ => Err(format!("node {index}: no state in {stream}")),
                };
            }
        }
    }
    Err(format!("node {index} reports no copy of `{name}`"))
}

/// Polls until the three nodes' own copies of stream `name` agree on their message count and
/// last sequence, and hold `stored` messages each: no per-node divergence after healing.
///
/// Called before the app's stream is read with `published()` or `dead_letters()`: those read
/// one replica (the one the short-lived consumer they create lands on), and a node restarted
/// moments before may still be catching up. Seen on nats-server 2.9.10: `published()` gave
/// 599 of 600 events, `dead_letters()` none of one, while that node's `/jsz` lagged.
async fn assert_nodes_agree(cluster: &NatsCluster, name: &str, stored: u64) {
    let what = format!("every node holds the same copy of `{name}`");
    let states = eventually(&what, async || {
        let mut states = Vec::new();
        for index in 0..cluster.len() {
            states.push(node_stream_state(cluster, index, name).await?);
        }
        let agree = states.windows(2).all(|pair| pair[0] == pair[1]);
        if agree && states[0].0 == stored {
            Ok(states)
        } else {
            Err(format!(
                "(messages, last_seq) per node: {states:?}; {stored} stored"
            ))
        }
    })
    .await;
    println!("`{name}` per node (messages, last_seq) after healing: {states:?}");
}

/// The plan's criteria once the load drained: every acked id handled or dead-lettered at
/// least once, nothing handled or dead-lettered that was not attempted. Returns the ids whose
/// side effect ran more than once (within design: a record of success lost in a fault lets
/// the redelivery run again).
fn assert_nothing_lost(
    sent: &Sent,
    handled: &HashMap<u64, u32>,
    dlq: &BTreeSet<u64>,
) -> Vec<(u64, u32)> {
    let lost: Vec<u64> = sent
        .acked()
        .into_iter()
        .filter(|id| !handled.contains_key(id) && !dlq.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "acked but neither handled nor dead-lettered: {lost:?}"
    );
    let attempted = sent.attempted();
    let phantoms: Vec<u64> = handled
        .keys()
        .chain(dlq)
        .copied()
        .filter(|id| !attempted.contains(id))
        .collect();
    assert!(
        phantoms.is_empty(),
        "handled or dead-lettered, never published: {phantoms:?}"
    );
    let mut repeated: Vec<(u64, u32)> = handled
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, count)| (*id, *count))
        .collect();
    repeated.sort_unstable();
    repeated
}

/// The ids (`entry-<id>`) of the app's dead letters, with how many letters each has.
async fn dead_lettered(app: &TestApp) -> HashMap<u64, usize> {
    let mut ids = HashMap::new();
    for letter in app.dead_letters().await.unwrap() {
        let id = letter
            .metadata
            .id
            .strip_prefix("entry-")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("a dead letter of an unknown event: {letter:?}"));
        *ids.entry(id).or_default() += 1;
    }
    ids
}

/// Each event id's success is recorded in the `EDA_PROCESSED` bucket once.
async fn processed_records(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("KV_EDA_PROCESSED").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// FAULTS #20: two of three nodes down is a lost quorum: every publish meanwhile fails as an
/// error (never a false Ok); once they are back publishing resumes and every event acked
/// before, during retries and after is handled (at least once: acks can fail in the outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_20_two_of_three_nodes_down_publishes_fail_as_errors_and_nothing_acked_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let posted = Arc::new(Posted::default());
    // Connected to the first node only, which stays up: the outage is the quorum's, not the
    // connection's.
    let url = cluster.node_url(0).unwrap();
    let app = start_on_cluster(|| {
        TestApp::builder(SERVICE)
            .nats(url.clone())
            .configure(|b| b.ack_wait(Duration::from_secs(2)).stream_replicas(3))
            .shared_state(Arc::clone(&posted))
            .handlers(&["post_entry"])
    })
    .await;
    let sent = Sent::default();
    let publisher = app.publisher();
    publish_until_stored(&publisher, 0..100, Duration::ZERO, &sent).await;

    cluster.stop(1);
    cluster.stop(2);
    for id in 100..103 {
        sent.attempted.lock().unwrap().insert(id);
        let options = PublishOptions::default().id(format!("entry-{id}"));
        let result = publisher.publish_with(&LedgerPosted { id }, options).await;
        assert!(
            result.is_err(),
            "entry {id} was confirmed without a quorum: {result:?}"
        );
    }

    tokio::task::block_in_place(|| cluster.restart_together(&[1, 2]))
        .unwrap_or_else(|e| panic!("{e}"));
    // The entries refused during the outage are published again with their ids (the broker
    // drops a repeat of one that was stored after all), then more.
    publish_until_stored(&publisher, 100..200, Duration::ZERO, &sent).await;

    eventually(
        "every acked entry handled after the quorum came back",
        async || {
            let (handled, acked) = (posted.distinct(), sent.acked_count());
            if handled >= acked {
                Ok(())
            } else {
                Err(format!("{handled} of {acked} handled"))
            }
        },
    )
    .await;
    app.settle().await;
    assert_nodes_agree(&cluster, EVENTS_STREAM, 200).await;
    assert!(app.dead_letters().await.unwrap().is_empty());
    assert_nothing_lost(&sent, &posted.counts(), &BTreeSet::new());
    assert_eq!(posted.distinct(), 200, "no phantoms");
    let stored = app.published::<LedgerPosted>().await.unwrap();
    assert_eq!(stored.len(), 200, "every entry stored once");
    app.shutdown().await.unwrap();
}

/// FAULTS #18: `kill -9` of the events stream's leader a third into a steady load, restarted
/// after 10 s: the two others elect a leader and go on (publishes failing meanwhile are retried
/// under the same id), the restarted node catches up; nothing acked is lost, the stream holds
/// each event once, and every node's own copy agrees after healing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_18_killing_the_stream_leader_loses_nothing_and_every_node_agrees_after_healing() {
    const EVENTS: u64 = 600;
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let posted = Arc::new(Posted::default());
    let url = cluster.url();
    let app = start_on_cluster(|| {
        TestApp::builder(SERVICE)
            .nats(url.clone())
            .configure(|b| b.ack_wait(Duration::from_secs(2)).stream_replicas(3))
            .shared_state(Arc::clone(&posted))
            .handlers(&["post_entry"])
    })
    .await;
    let js = jetstream::new(plain_client(&cluster).await);
    let replicas = js
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .num_replicas;
    assert_eq!(replicas, 3, "the events stream is R3");

    // Steady load: one event at a time, 25 ms apart, so that it runs on through the outage
    // and the restart.
    let sent = Arc::new(Sent::default());
    let load = tokio::spawn({
        let publisher = app.publisher();
        let sent = Arc::clone(&sent);
        async move {
            publish_until_stored(&publisher, 0..EVENTS, Duration::from_millis(25), &sent).await
        }
    });
    eventually("a third of the load is acked", async || {
        let acked = sent.acked_count();
        if acked as u64 >= EVENTS / 3 {
            Ok(())
        } else {
            Err(format!("{acked} acked"))
        }
    })
    .await;
    let leader = eventually("the stream has a leader", async || stream_leader(&js).await).await;
    let consumer = consumer_leader(&js, "faults-cluster__post_entry").await;
    println!(
        "killing n{} (stream leader; consumer leader: {consumer:?})",
        leader + 1
    );
    cluster.stop(leader);
    let (acked_at_kill, handled_at_kill) = (sent.acked_count(), posted.distinct());

    // Down for 10 s (the scenario's fixed outage) under load.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let new_leader = eventually(
        "another node leads the stream",
        async || match stream_leader(&js).await? {
            l if l == leader => Err(format!("n{} still named leader", l + 1)),
            l => Ok(l),
        },
    )
    .await;
    eventually(
        "publishing and handling go on without the killed leader",
        async || {
            let (acked, handled) = (sent.acked_count(), posted.distinct());
            if acked > acked_at_kill && handled > handled_at_kill {
                Ok(())
            } else {
                Err(format!(
                    "acked {acked_at_kill} -> {acked}, handled {handled_at_kill} -> {handled}"
                ))
            }
        },
    )
    .await;
    println!(
        "n{} leads the stream while n{} is down",
        new_leader + 1,
        leader + 1
    );

    tokio::task::block_in_place(|| cluster.restart(leader)).unwrap_or_else(|e| panic!("{e}"));
    eventually("the stream has a leader after the restart", async || {
        stream_leader(&js).await
    })
    .await;
    load.await.expect("the load finishes");
    assert_eq!(
        sent.acked_count() as u64,
        EVENTS,
        "every event acked in the end"
    );

    eventually("every acked event handled", async || {
        let (handled, acked) = (posted.distinct(), sent.acked_count());
        if handled >= acked {
            Ok(())
        } else {
            Err(format!("{handled} of {acked} handled"))
        }
    })
    .await;
    app.settle().await;
    assert_nodes_agree(&cluster, EVENTS_STREAM, EVENTS).await;
    let dlq = dead_lettered(&app).await;
    assert!(dlq.is_empty(), "nothing dead-lettered: {dlq:?}");
    let repeated = assert_nothing_lost(&sent, &posted.counts(), &BTreeSet::new());
    println!("side effects repeated (within design): {repeated:?}");
    let stored = app.published::<LedgerPosted>().await.unwrap();
    let unique: BTreeSet<u64> = stored.iter().map(|e| e.id).collect();
    assert_eq!(
        (stored.len(), unique.len()),
        (EVENTS as usize, EVENTS as usize),
        "the stream holds each event once (retried publishes deduplicated)"
    );
    assert_eq!(
        processed_records(&js).await,
        EVENTS,
        "each event's success recorded once"
    );
    app.shutdown().await.unwrap();
}

/// FAULTS #19: the app knows one node's URL only, and that node (leading neither the stream
/// nor the handler's consumer) is killed under load: the client reconnects to a node it
/// learned from the cluster, consumption resumes, nothing acked is lost. The node comes back
/// afterwards and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_19_killing_the_node_the_client_is_connected_to_reconnects_and_resumes() {
    const EVENTS: u64 = 600;
    /// The node the app connects to.
    const NODE: usize = 1;
    const DURABLE: &str = "faults-cluster__post_entry";
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let posted = Arc::new(Posted::default());
    let url = cluster.node_url(NODE).unwrap();
    let app = start_on_cluster(|| {
        TestApp::builder(SERVICE)
            .nats(url.clone())
            .configure(|b| b.ack_wait(Duration::from_secs(2)).stream_replicas(3))
            .shared_state(Arc::clone(&posted))
            .handlers(&["post_entry"])
    })
    .await;
    let client = plain_client(&cluster).await;
    let js = jetstream::new(client.clone());
    // Scenario 19 is about the client's node, not a leader (#18): leadership of the stream
    // and of the handler's consumer is moved off it.
    for (what, subject) in [
        (
            "stream",
            format!("$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}"),
        ),
        (
            "consumer",
            format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{EVENTS_STREAM}.{DURABLE}"),
        ),
    ] {
        eventually(
            &format!("the {what} is led by another node than n{}", NODE + 1),
            async || {
                let leader = if what == "stream" {
                    stream_leader(&js).await?
                } else {
                    consumer_leader(&js, DURABLE).await?
                };
                if leader != NODE {
                    return Ok(());
                }
                let _ = client.request(subject.clone(), bytes::Bytes::new()).await;
                Err(format!(
                    "n{} leads the {what}; asked it to step down",
                    leader + 1
                ))
            },
        )
        .await;
    }
    let monitors: Vec<String> = (0..cluster.len())
        .map(|i| cluster.monitor_url(i).unwrap())
        .collect();
    let connected_to = async |index: usize| service_connected(&monitors[index]).await;
    assert!(
        connected_to(NODE).await.unwrap(),
        "the app is connected to n{}",
        NODE + 1
    );

    let sent = Arc::new(Sent::default());
    let load = tokio::spawn({
        let publisher = app.publisher();
        let sent = Arc::clone(&sent);
        async move {
            publish_until_stored(&publisher, 0..EVENTS, Duration::from_millis(25), &sent).await
        }
    });
    eventually("a third of the load is acked", async || {
        let acked = sent.acked_count();
        if acked as u64 >= EVENTS / 3 {
            Ok(())
        } else {
            Err(format!("{acked} acked"))
        }
    })
    .await;
    cluster.stop(NODE);
    let (acked_at_kill, handled_at_kill) = (sent.acked_count(), posted.distinct());
    let other = eventually("the app reconnects to another node", async || {
        if !app.app().is_connected() {
            return Err("the app reports no connection".into());
        }
        for index in (0..cluster.len()).filter(|i| *i != NODE) {
            if connected_to(index).await? {
                return Ok(index);
            }
        }
        Err("the app reports a connection, but no live node lists it".into())
    })
    .await;
    println!("the app reconnected to n{}", other + 1);
    eventually(
        "publishing and handling resume on the new connection",
        async || {
            let (acked, handled) = (sent.acked_count(), posted.distinct());
            if acked > acked_at_kill && handled > handled_at_kill {
                Ok(())
            } else {
                Err(format!(
                    "acked {acked_at_kill} -> {acked}, handled {handled_at_kill} -> {handled}"
                ))
            }
        },
    )
    .await;
    load.await.expect("the load finishes");
    assert_eq!(
        sent.acked_count() as u64,
        EVENTS,
        "every event acked in the end"
    );
    // Drained while the app's own node is still down.
    eventually("every acked event handled", async || {
        let (handled, acked) = (posted.distinct(), sent.acked_count());
        if handled >= acked {
            Ok(())
        } else {
            Err(format!("{handled} of {acked} handled"))
        }
    })
    .await;
    app.settle().await;
    let repeated = assert_nothing_lost(&sent, &posted.counts(), &BTreeSet::new());
    println!("side effects repeated (within design): {repeated:?}");

    tokio::task::block_in_place(|| cluster.restart(NODE)).unwrap_or_else(|e| panic!("{e}"));
    // The stream and the dead letters are read once the node is back and caught up. They are
    // read through an ephemeral consumer, and on nats-server 2.9.10 with one node of three
    // down about every other creation of one gets no answer (`published()` and
    // `dead_letters()` fail with "timed out"; the ephemerals that are created sit on live
    // nodes). 2.15.1 answered every such read while the node was down.
    assert_nodes_agree(&cluster, EVENTS_STREAM, EVENTS).await;
    let dlq = dead_lettered(&app).await;
    assert!(dlq.is_empty(), "nothing dead-lettered: {dlq:?}");
    let stored = app.published::<LedgerPosted>().await.unwrap();
    let unique: BTreeSet<u64> = stored.iter().map(|e| e.id).collect();
    assert_eq!(
        (stored.len(), unique.len()),
        (EVENTS as usize, EVENTS as usize),
        "the stream holds each event once (retried publishes deduplicated)"
    );
    assert!(
        app.app().is_connected(),
        "still connected after the node came back"
    );
    app.shutdown().await.unwrap();
}

/// The event id that [`refuse_poison`] always fails.
const POISON: u64 = 1_000;

/// What the poison's attempts saw, and the test's signal to let the last one finish.
#[derive(Default)]
pub struct Poison {
    attempts: Mutex<Vec<u32>>,
    at_last_attempt: AtomicBool,
    release: AtomicBool,
}

/// Handles every entry but [`POISON`], which fails at each of its three attempts. The last
/// attempt is held until the test has killed the consumer's leader, so that its failure, the
/// dead letter and the terminate happen across the leader change.
#[handler(
    service = "faults-cluster",
    retries = 2,
    base_delay = "200ms",
    jitter = false,
    timeout = "90s"
)]
async fn refuse_poison(
    event: LedgerPosted,
    ctx: Context,
    posted: State<Posted>,
    poison: State<Poison>,
) -> Result<(), HandlerError> {
    if event.id != POISON {
        posted.post(event.id);
        return Ok(());
    }
    poison.attempts.lock().unwrap().push(ctx.attempt());
    if ctx.attempt() >= 3 {
        poison.at_last_attempt.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !poison.release.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Err(HandlerError::retry(std::io::Error::other(format!(
        "entry {POISON} is poison"
    ))))
}

/// FAULTS #21: a poison message at its last attempt (`retries = 2`: the third) while the
/// consumer's leader is killed and restarted: it is dead-lettered exactly once, and the
/// consumer is not blocked afterwards: 50 good events before it and 50 after the restart
/// are all handled, and the consumer ends with nothing pending or unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_21_a_poison_message_at_its_last_attempt_with_the_consumer_leader_restarted_does_not_block_the_consumer(
) {
    const DURABLE: &str = "faults-cluster__refuse_poison";
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let posted = Arc::new(Posted::default());
    let poison = Arc::new(Poison::default());
    let url = cluster.url();
    let app = start_on_cluster(|| {
        TestApp::builder(SERVICE)
            .nats(url.clone())
            .configure(|b| b.ack_wait(Duration::from_secs(2)).stream_replicas(3))
            .shared_state(Arc::clone(&posted))
            .shared_state(Arc::clone(&poison))
            .handlers(&["refuse_poison"])
    })
    .await;
    let js = jetstream::new(plain_client(&cluster).await);
    let sent = Sent::default();
    let publisher = app.publisher();
    let none = Duration::ZERO;
    publish_until_stored(&publisher, 0..25, none, &sent).await;
    publish_until_stored(&publisher, POISON..POISON + 1, none, &sent).await;
    publish_until_stored(&publisher, 25..50, none, &sent).await;

    eventually("the poison reaches its last attempt", async || {
        if poison.at_last_attempt.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!("attempts {:?}", poison.attempts.lock().unwrap()))
        }
    })
    .await;
    let leader = eventually("the consumer has a leader", async || {
        consumer_leader(&js, DURABLE).await
    })
    .await;
    println!("killing n{} (consumer leader)", leader + 1);
    cluster.stop(leader);
    poison.release.store(true, Ordering::SeqCst);
    eventually(
        "another node leads the consumer",
        async || match consumer_leader(&js, DURABLE).await? {
            l if l == leader => Err(format!("n{} still named leader", l + 1)),
            l => Ok(l),
        },
    )
    .await;
    tokio::task::block_in_place(|| cluster.restart(leader)).unwrap_or_else(|e| panic!("{e}"));
    eventually("the consumer has a leader after the restart", async || {
        consumer_leader(&js, DURABLE).await
    })
    .await;

    publish_until_stored(&publisher, 50..100, none, &sent).await;
    eventually(
        "all 100 good events handled and the poison dead-lettered",
        async || {
            let handled = posted.distinct();
            let dlq = dead_lettered(&app).await;
            if handled >= 100 && dlq.contains_key(&POISON) {
                Ok(())
            } else {
                Err(format!("{handled} of 100 handled; dead letters {dlq:?}"))
            }
        },
    )
    .await;
    app.settle().await;
    // The restarted node's copies caught up: the letter is read from whichever replica.
    assert_nodes_agree(&cluster, EVENTS_STREAM, 101).await;
    assert_nodes_agree(&cluster, "EDA_DLQ", 1).await;
    let dlq = dead_lettered(&app).await;
    assert_eq!(
        dlq,
        HashMap::from([(POISON, 1)]),
        "the poison dead-lettered exactly once, nothing else"
    );
    let letters = app.dead_letters().await.unwrap();
    assert_eq!(
        letters[0].attempts, 3,
        "after its three attempts: {:?}",
        letters[0]
    );
    let counts = posted.counts();
    let repeated = assert_nothing_lost(&sent, &counts, &BTreeSet::from([POISON]));
    println!("side effects repeated (within design): {repeated:?}");
    assert!(
        (0..100).all(|id| counts.contains_key(&id)) && !counts.contains_key(&POISON),
        "every good event handled, the poison never: {counts:?}"
    );
    let attempts = poison.attempts.lock().unwrap().clone();
    assert!(
        attempts.starts_with(&[1, 2, 3]),
        "the poison ran its three attempts: {attempts:?}"
    );
    println!("the poison's handler ran at attempts {attempts:?}");
    let info = eventually("the consumer is not blocked", async || {
        let info = consumer_info(&js, DURABLE).await?;
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            Ok(info)
        } else {
            Err(format!(
                "num_ack_pending {}, num_pending {}, delivered {:?}, ack floor {:?}",
                info.num_ack_pending, info.num_pending, info.delivered, info.ack_floor
            ))
        }
    })
    .await;
    println!(
        "consumer after the drain: delivered {:?}, ack floor {:?}, redelivered {}",
        info.delivered, info.ack_floor, info.num_redelivered
    );
    app.shutdown().await.unwrap();
}
