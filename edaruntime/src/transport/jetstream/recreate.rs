//! A consumer deleted behind the app's back, or taken with its event stream: found by the
//! pull source, recreated where the app last saw it acknowledged (or afresh for a new stream).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::consume::{PullSource, Pulled};
use super::JetStream;

impl JetStream {
    /// Names this incarnation of the event stream (its name and creation time), for the
    /// idempotency keys of messages whose id is only their stream sequence.
    pub(super) async fn stream_epoch(&self) -> Option<Arc<str>> {
        self.stream_epoch_of(&self.settings.topology.events_stream)
            .await
    }

    /// Names this incarnation of stream `name` (its name and creation time).
    pub(super) async fn stream_epoch_of(&self, name: &str) -> Option<Arc<str>> {
        let mut stream = self.context.get_stream(name).await.ok()?;
        let info = stream.info().await.ok()?;
        let created = info.created.unix_timestamp_nanos();
        Some(Arc::from(format!("{}-{created}", info.config.name)))
    }
}

impl PullSource {
    /// Recreates the consumer if it is gone, from where the app last saw it acknowledged.
    /// If the event stream itself was recreated (it took its consumers with it), the new one
    /// starts over: the handler's `start` policy, fresh positions and a new epoch.
    pub(super) async fn check_consumer(&mut self) {
        if self.pulled == Pulled::Redrive {
            // A work queue holds only what is not handled yet: recreated, it delivers that.
            // The stream itself may have been deleted (and its sequences start over: the
            // epoch keeps redrive keys of the new incarnation apart from the old one's).
            let (names, descriptor) = (&self.runtime.names, self.runtime.descriptor);
            let bound = match self.js.ensure_redrive_stream().await {
                Ok(()) => self.js.redrive_consumer(names, descriptor).await.map(drop),
                Err(e) => Err(e),
            };
            match bound {
                Ok(()) => {
                    let stream = &self.js.settings.topology.redrive_stream;
                    if let Some(epoch) = self.js.stream_epoch_of(stream).await {
                        self.epoch = epoch;
                    }
                }
                Err(e) => {
                    tracing::warn!(consumer = %names.redrive_durable, error = %e, "cannot bind the redrive consumer; trying again")
                }
            }
            return;
        }
        let durable = self.runtime.durable().to_owned();
        match self.js.consumer_exists(&durable).await {
            Ok(true) | Err(_) => return,
            Ok(false) => {}
        }
        let descriptor = self.runtime.descriptor;
        let recreated = match self.js.stream_epoch().await {
            Some(epoch) if epoch != self.epoch => {
                tracing::warn!(consumer = %durable, stream = %epoch,
                    "the event stream was recreated; creating the consumer anew with the handler's start policy");
                self.epoch = epoch;
                self.seen_before = 0;
                self.runtime.acknowledged.store(0, Ordering::SeqCst);
                self.js.consumer(&durable, descriptor).await
            }
            _ => {
                let position = self.runtime.acknowledged.load(Ordering::SeqCst);
                tracing::warn!(consumer = %durable, from_sequence = position + 1,
                    "the consumer was deleted behind the app's back; recreating it from the last acknowledged position (messages after it are delivered again; this instance looks their ids up)");
                // Everything up to the stream's end may have been delivered before.
                let last = self.js.last_sequences().await.map(|(events, _)| events);
                self.seen_before = self.seen_before.max(last.unwrap_or(self.highest));
                self.js
                    .recreate_consumer(&durable, descriptor, position)
                    .await
            }
        };
        match recreated {
            Ok(_) => self.bound(),
            Err(e) => {
                tracing::error!(consumer = %durable, error = %e, "cannot recreate the consumer; trying again")
            }
        }
    }
}
