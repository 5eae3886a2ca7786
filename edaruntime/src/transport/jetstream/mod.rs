//! The NATS JetStream transport: connecting, provisioning (DESIGN.md §5), publishing with
//! broker confirmation, pulling for the consume driver, acks, the processed-id store, and
//! inspection for tests and tools. What to do with a message is decided in
//! [`crate::delivery`]; this module only carries bytes, acks and naks.

mod ack;
mod aggregate;
mod connect;
pub use connect::connect_client;
mod consume;
mod inspect;
mod kv;
mod pause;
pub(crate) mod permissions;
mod provision;
mod publish;
mod recreate;
mod schemas;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream;

use crate::config::NatsSettings;
use crate::error::{Error, ErrorKind};

/// A connection to NATS with JetStream, and the topology eda needs on it.
pub(crate) struct JetStream {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: NatsSettings,
    replicas: usize,
    connected: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
    refusals: Arc<connect::Refusals>,
    acks: Arc<ack::AckSender>,
}

impl fmt::Debug for JetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStream")
            .field("url", &crate::config::redacted_url(&self.settings.url))
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// Sends one message to a request's reply subject.
pub(crate) type Reply =
    Arc<dyn Fn(Vec<u8>) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;
/// Answers one request: its payload, and how to reply (as often as it takes).
pub(crate) type Answer =
    Arc<dyn Fn(bytes::Bytes, Reply) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

impl JetStream {
    /// Answers the requests on `subject` with `answer`, each in a task of its own, for as long
    /// as it runs. Every instance of a service subscribes (no queue group): each answers for
    /// itself, and the asker picks the answer it needs.
    pub(crate) async fn serve(self: Arc<Self>, subject: String, answer: Answer) {
        let mut requests = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(requests) => break requests,
                Err(e) => {
                    tracing::warn!(subject = %subject, error = %e, "cannot listen for control requests; trying again in 5 s");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        };
        while let Some(request) = futures_util::StreamExt::next(&mut requests).await {
            let Some(to) = request.reply else { continue };
            let client = self.client.clone();
            let reply: Reply = Arc::new(move |payload| {
                let (client, to) = (client.clone(), to.clone());
                Box::pin(async move {
                    if let Err(e) = client.publish(to, payload.into()).await {
                        tracing::warn!(error = %e, "cannot answer a control request");
                    }
                    let _ = client.flush().await;
                })
            });
            tokio::spawn(answer(request.payload, reply));
        }
    }

    /// Whether the connection is up now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// How many times the connection came back after being lost.
    #[allow(dead_code)]
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// `<prefix>.`: what every event subject starts with.
    fn subject_prefix(&self) -> String {
        format!("{}.", self.settings.topology.subject_prefix)
    }

    /// The stream `name`, or an error of `kind` naming it.
    async fn stream(
        &self,
        name: &str,
        kind: ErrorKind,
    ) -> Result<jetstream::stream::Stream, Error> {
        self.context.get_stream(name).await.map_err(|e| {
            Error::with_source(kind, format!("cannot look up stream `{name}`: {e}"), e)
        })
    }
}

/// A message's headers as name and value pairs (the first value of a repeated header), for
/// reading in one pass: a lookup by name in the client's map allocates the name each time.
fn header_pairs(
    headers: Option<&async_nats::HeaderMap>,
) -> impl Iterator<Item = (&str, &str)> + '_ {
    headers.into_iter().flat_map(|map| {
        map.iter().filter_map(|(name, values)| {
            Some((AsRef::<str>::as_ref(name), values.first()?.as_str()))
        })
    })
}
