//! Pulling for the consume driver. eda sends its own pull requests (rather than async-nats'
//! pull stream) so that it never asks for more messages than the driver can start at once: a
//! pulled message's ack wait runs from the moment the server sends it, and a message waiting
//! in a client buffer behind busy handlers would be redelivered to another instance while
//! this one still holds it. The messages asked for and not yet received never exceed the free
//! slots; as slots free up, a further request tops the count up (once a quarter of the slots
//! are free, so that a busy consumer does not send a request per message). A request ends when
//! it is filled or expires (the server says so, with how many it did not fill); when the
//! server goes silent (no message, no heartbeat) every request is taken for lost and the
//! count starts again, so a lost request costs at most two heartbeats, never a stall.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{StatusCode, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::ack::{AckInfo, JsAck};
use super::JetStream;
use crate::delivery::{driver, HandlerRuntime};
use crate::event::RawEvent;
use crate::lifecycle::Signals;
use crate::port::{Delivery, Source};
use crate::wire;

/// How long one pull request waits at the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says a waiting pull request is alive; two missed and the request is
/// taken for lost.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// At shutdown, how long the server may stay quiet before the outstanding requests are taken
/// to bring nothing more.
const RELEASE_QUIET: Duration = Duration::from_millis(250);
/// How long to wait before pulling again after the broker could not serve a pull.
const PULL_RETRY: Duration = Duration::from_secs(1);

impl JetStream {
    /// Runs one app instance's share of a handler's durable consumer until `signals` says
    /// stop. `acknowledged` is the consumer's ack floor when it was bound.
    pub(crate) async fn consume(
        self: Arc<Self>,
        runtime: Arc<HandlerRuntime>,
        acknowledged: u64,
        signals: Signals,
    ) {
        runtime.acknowledged.store(acknowledged, Ordering::SeqCst);
        let epoch = match self.stream_epoch().await {
            Some(epoch) => epoch,
            None => {
                tracing::warn!(stream = %self.settings.topology.events_stream, "cannot read the event stream's creation time: idempotency keys of messages without `Nats-Msg-Id` use its name alone");
                Arc::from(self.settings.topology.events_stream.as_str())
            }
        };
        runtime.bound.store(true, Ordering::SeqCst);
        let follower = match runtime
            .breaker
            .as_ref()
            .filter(|b| b.config().pauses_consumer())
        {
            Some(breaker) if self.can_pause_consumers() => {
                let follow =
                    Arc::clone(&self).follow_breaker(breaker.clone(), runtime.durable().to_owned());
                Some(tokio::spawn(follow).abort_handle())
            }
            Some(breaker) => {
                tracing::warn!(breaker = breaker.name(), consumer = %runtime.durable(),
                    server = %self.client.server_info().version,
                    "pause_consumer needs nats-server 2.11 or later: while the breaker is open only this instance pauses");
                None
            }
            None => None,
        };
        let concurrency = runtime.options().concurrency.max(1) as usize;
        let events = PullSource::new(&self, &runtime, Pulled::Events, concurrency, &epoch);
        // Redriven dead letters: one at a time, beside the handler's new messages.
        let redrive_stream = &self.settings.topology.redrive_stream;
        let redrive_epoch = match self.stream_epoch_of(redrive_stream).await {
            Some(epoch) => epoch,
            None => Arc::from(redrive_stream.as_str()),
        };
        let redrive = PullSource::new(&self, &runtime, Pulled::Redrive, 1, &redrive_epoch);
        futures_util::future::join(
            driver::drive(Arc::clone(&runtime), events, signals.clone(), concurrency),
            driver::drive(runtime, redrive, signals, 1),
        )
        .await;
        if let Some(follower) = follower {
            follower.abort();
        }
    }
}

/// Which of a handler's two durable consumers a [`PullSource`] pulls from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pulled {
    /// `<service>__<handler>` on the event stream.
    Events,
    /// `<service>__<handler>__redrive` on the redrive stream: the handler's dead letters an
    /// operator sent back (`eda dlq redrive`), delivered as the events they hold.
    Redrive,
}

/// One instance's share of a handler's durable consumer, pulled with eda's own requests.
pub(super) struct PullSource {
    pub(super) js: Arc<JetStream>,
    pub(super) runtime: Arc<HandlerRuntime>,
    pub(super) pulled: Pulled,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`.
    subject: String,
    inbox: String,
    prefix: String,
    subscription: Option<Subscriber>,
    /// Messages the outstanding pull requests may still bring (0: none outstanding).
    requested: usize,
    /// The fewest messages a further request asks for while others are outstanding.
    top_up: usize,
    /// When the server was last heard from about the outstanding request.
    heard: Instant,
    /// When the newest outstanding request expires at the server (the others expire before).
    expires_at: Instant,
    pub(super) epoch: Arc<str>,
    /// Stream sequences up to this one may have been handled by a consumer deleted behind the
    /// app's back: look their ids up even on a first delivery.
    pub(super) seen_before: u64,
    /// The highest stream sequence this instance received.
    pub(super) highest: u64,
}

enum Heard {
    Message(async_nats::Message),
    /// The subscription ended (the connection closed).
    Ended,
    /// Nothing within two heartbeats, or past the request's expiry.
    Silence,
}

impl Source for PullSource {
    type Ack = JsAck;

    fn ack_wait(&self) -> Option<Duration> {
        Some(self.js.settings.topology.ack_wait)
    }

    async fn next(&mut self, room: usize, ahead: usize) -> Option<(Delivery, JsAck)> {
        loop {
            if room + ahead == 0 && self.requested == 0 {
                // Paused (an open circuit breaker): nothing asked for, nothing outstanding.
                return std::future::pending().await;
            }
            if self.subscription.is_none() {
                match self.js.client.subscribe(self.inbox.clone()).await {
                    Ok(subscription) => self.subscription = Some(subscription),
                    Err(e) => {
                        self.unbound(&format!("cannot subscribe for pulled messages: {e}"));
                        tokio::time::sleep(PULL_RETRY).await;
                        return None;
                    }
                }
            }
            if !self.js.is_connected() {
                // Requests sent now would wait in the client and reach the server all at once
                // on reconnect; those sent before are gone with the connection.
                self.requested = 0;
                self.unbound("disconnected from NATS; pulling again once reconnected");
                tokio::time::sleep(PULL_RETRY).await;
                return None;
            }
            let wanted = (room + ahead).saturating_sub(self.requested);
            if wanted > 0
                && (self.requested == 0 || wanted >= self.top_up)
                && !self.pull(wanted).await
            {
                tokio::time::sleep(PULL_RETRY).await;
                return None;
            }
            let heard = self.listen().await;
            match heard {
                Heard::Ended => {
                    self.subscription = None;
                    self.requested = 0;
                    self.unbound("the pull subscription ended; reopening it");
                    tokio::time::sleep(PULL_RETRY).await;
                    return None;
                }
                Heard::Silence => {
                    let expired = Instant::now() >= self.expires_at;
                    self.requested = 0;
                    if !expired {
                        self.unbound("missed heartbeats from the server; pulling again");
                        self.check_consumer().await;
                        return None;
                    }
                }
                Heard::Message(message) => {
                    self.heard = Instant::now();
                    match message.status {
                        None | Some(StatusCode::OK) => {
                            self.requested = self.requested.saturating_sub(1);
                            self.bound();
                            if let Some(found) = self.delivery(message).await {
                                return Some(found);
                            }
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => self.bound(),
                        Some(status) => {
                            let unfilled = unfilled(&message);
                            if let Some(wait) = self
                                .status(status, message.description.as_deref(), unfilled)
                                .await
                            {
                                tokio::time::sleep(wait).await;
                                return None;
                            }
                        }
                    }
                }
            }
        }
    }

    async fn release(&mut self) {
        let Some(mut subscription) = self.subscription.take() else {
            return;
        };
        // What the outstanding requests still bring is taken and handed back (a message
        // dropped by an unsubscribed client would return only after the ack wait, counted as
        // an attempt); the server going quiet for a moment ends the wait.
        while self.requested > 0 {
            let Ok(Some(message)) = tokio::time::timeout(RELEASE_QUIET, subscription.next()).await
            else {
                break;
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.requested = self.requested.saturating_sub(1);
                    self.hand_back_unstarted(message).await;
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(_) => {
                    let unfilled = unfilled(&message);
                    self.requested = unfilled.map_or(0, |n| self.requested.saturating_sub(n));
                }
            }
        }
        let _ = subscription.unsubscribe().await;
        while let Some(Some(message)) = futures_util::FutureExt::now_or_never(subscription.next()) {
            if matches!(message.status, None | Some(StatusCode::OK)) {
                self.hand_back_unstarted(message).await;
            }
        }
    }
}

/// How many messages of its pull request a status message says were not brought
/// (`Nats-Pending-Messages`).
fn unfilled(status: &async_nats::Message) -> Option<usize> {
    status
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Pending-Messages"))
        .and_then(|v| v.as_str().parse().ok())
}

impl PullSource {
    fn new(
        js: &Arc<JetStream>,
        runtime: &Arc<HandlerRuntime>,
        pulled: Pulled,
        concurrency: usize,
        epoch: &Arc<str>,
    ) -> PullSource {
        let t = &js.settings.topology;
        let (stream, durable) = match pulled {
            Pulled::Events => (&t.events_stream, &runtime.names.durable),
            Pulled::Redrive => (&t.redrive_stream, &runtime.names.redrive_durable),
        };
        PullSource {
            subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
            inbox: js.client.new_inbox(),
            prefix: js.subject_prefix(),
            js: Arc::clone(js),
            runtime: Arc::clone(runtime),
            pulled,
            subscription: None,
            requested: 0,
            top_up: (concurrency / 4).max(1),
            heard: Instant::now(),
            expires_at: Instant::now(),
            epoch: Arc::clone(epoch),
            seen_before: 0,
            highest: 0,
        }
    }

    /// The durable consumer this source pulls from.
    pub(super) fn durable(&self) -> &str {
        match self.pulled {
            Pulled::Events => &self.runtime.names.durable,
            Pulled::Redrive => &self.runtime.names.redrive_durable,
        }
    }

    /// Hands back a message that never reached its handler, counting the hand-back so that
    /// its next delivery does not take it for an attempt.
    async fn hand_back_unstarted(&mut self, message: async_nats::Message) {
        if let Some((delivery, ack)) = self.delivery(message).await {
            let runtime = Arc::clone(&self.runtime);
            runtime
                .hand_back_unstarted(&delivery, &ack, Duration::ZERO)
                .await;
        }
    }

    /// Asks for `count` more messages. False if the request could not be sent.
    async fn pull(&mut self, count: usize) -> bool {
        let request = serde_json::json!({
            "batch": count,
            "expires": PULL_EXPIRES.as_nanos() as u64,
            "idle_heartbeat": PULL_HEARTBEAT.as_nanos() as u64,
        });
        let payload = Bytes::from(request.to_string());
        match self
            .js
            .client
            .publish_with_reply(self.subject.clone(), self.inbox.clone(), payload)
            .await
        {
            Ok(()) => {
                self.requested += count;
                self.heard = Instant::now();
                self.expires_at = self.heard + PULL_EXPIRES;
                true
            }
            Err(e) => {
                self.unbound(&format!("cannot send a pull request: {e}"));
                false
            }
        }
    }

    async fn listen(&mut self) -> Heard {
        let Some(subscription) = self.subscription.as_mut() else {
            return Heard::Ended;
        };
        // Under load the next message is already there: no timer for it.
        if let Some(message) = futures_util::FutureExt::now_or_never(subscription.next()) {
            return match message {
                Some(message) => Heard::Message(message),
                None => Heard::Ended,
            };
        }
        let silent_at = (self.heard + 2 * PULL_HEARTBEAT).min(self.expires_at + PULL_HEARTBEAT);
        tokio::select! {
            biased;
            message = subscription.next() => match message {
                Some(message) => Heard::Message(message),
                None => Heard::Ended,
            },
            () = tokio::time::sleep_until(silent_at) => Heard::Silence,
        }
    }

    /// A status ends one request (expired: `unfilled` says how many of its messages it did
    /// not bring) or all of them; returns how long to wait before pulling again.
    async fn status(
        &mut self,
        status: StatusCode,
        description: Option<&str>,
        unfilled: Option<usize>,
    ) -> Option<Duration> {
        let durable = self.durable().to_owned();
        if let (StatusCode::TIMEOUT | StatusCode::NOT_FOUND, Some(unfilled)) = (status, unfilled) {
            self.requested = self.requested.saturating_sub(unfilled);
        } else {
            self.requested = 0;
        }
        match (status, description) {
            // Expired, or the server has nothing for a no-wait request: pull again at once,
            // for as many slots as are free now.
            (StatusCode::TIMEOUT | StatusCode::NOT_FOUND, _) => {
                self.bound();
                Some(Duration::ZERO)
            }
            (StatusCode::REQUEST_TERMINATED, Some(d)) if d.contains("Consumer Deleted") => {
                self.unbound("the consumer was deleted");
                self.check_consumer().await;
                Some(Duration::ZERO)
            }
            // A leadership change, or the server's limits on waiting requests: pull again.
            (StatusCode::REQUEST_TERMINATED, Some(d)) if d.contains("Leadership Change") => None,
            // Nobody serves the consumer: it was deleted (with no request waiting to hear of
            // it), or the stream's leader is away.
            (StatusCode::NO_RESPONDERS, _) => {
                self.unbound("no server answers pull requests; checking the consumer");
                self.check_consumer().await;
                Some(PULL_RETRY)
            }
            (status, description) => {
                tracing::warn!(consumer = %durable, %status, description, "the server ended a pull request; pulling again");
                Some(PULL_RETRY)
            }
        }
    }

    /// A pulled message as the driver takes it; `None` (after terminating it) for a message
    /// without JetStream metadata, which would otherwise come back forever.
    async fn delivery(&mut self, message: async_nats::Message) -> Option<(Delivery, JsAck)> {
        let reply = message.reply.clone()?;
        let Some(info) = AckInfo::parse(reply.as_str()) else {
            tracing::error!(subject = %message.subject, reply = %reply,
                "a pulled message without JetStream metadata; terminating it");
            self.js.ack_for(reply).terminate_now().await;
            return None;
        };
        let subject = message.subject.as_str();
        let (decoded, redrive) = match self.pulled {
            Pulled::Events => {
                self.highest = self.highest.max(info.stream_sequence);
                let name = subject.strip_prefix(&self.prefix).unwrap_or(subject);
                let decoded = wire::decode(
                    name,
                    super::header_pairs(message.headers.as_ref()),
                    Some(info.stream_sequence),
                    Some(info.published),
                );
                (decoded, None)
            }
            Pulled::Redrive => {
                let pairs: Vec<_> = super::header_pairs(message.headers.as_ref()).collect();
                // Not a dead letter eda wrote: decoded as itself, so that its handler's decode
                // fails and it becomes a dead letter of its own.
                let decoded = wire::original_event(&pairs, &self.prefix, Some(info.published))
                    .unwrap_or_else(|| {
                        wire::decode(
                            subject,
                            pairs.iter().copied(),
                            Some(info.stream_sequence),
                            Some(info.published),
                        )
                    });
                // Unique per redriven message, also across incarnations of the stream.
                let tag = format!("{}-{}", self.epoch, info.stream_sequence);
                (decoded, Some(Arc::<str>::from(tag)))
            }
        };
        let id_epoch = (!decoded.id_from_header).then(|| Arc::clone(&self.epoch));
        let attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
        let delivery = Delivery {
            raw: RawEvent::new(decoded.metadata, message.payload, attempt),
            redelivered: attempt > 1 || info.stream_sequence <= self.seen_before,
            header_error: decoded.error,
            id_epoch,
            redrive,
        };
        Some((delivery, self.js.ack_for(reply)))
    }

    /// Readiness follows the handler's consumer on the event stream alone.
    pub(super) fn bound(&self) {
        if self.pulled == Pulled::Events {
            self.runtime.bound.store(true, Ordering::SeqCst);
        }
    }

    fn unbound(&self, why: &str) {
        let was_bound = match self.pulled {
            Pulled::Events => self.runtime.bound.swap(false, Ordering::SeqCst),
            Pulled::Redrive => false,
        };
        if was_bound {
            tracing::warn!(consumer = %self.durable(), "{why}");
        } else {
            tracing::debug!(consumer = %self.durable(), "{why}");
        }
    }
}
