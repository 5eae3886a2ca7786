//! How one delivered message is settled: exactly once, or handed back when dropped.

use std::sync::Arc;
use std::time::Duration;

use crate::error::BoxError;
use crate::lifecycle::Outstanding;
use crate::port::Acknowledge;

/// One message's settlement: exactly one of ack, nak or term, or — dropped unsettled, when
/// its handler was cut off at the shutdown deadline or its task unwound — handed back for
/// redelivery now (another instance takes it rather than waiting for the ack wait).
pub(crate) struct Settlement<A: Acknowledge> {
    ack: Option<A>,
    hand_backs: Arc<Outstanding>,
    counted: metrics::Counter,
}

impl<A: Acknowledge> Settlement<A> {
    pub(crate) fn new(ack: A, hand_backs: Arc<Outstanding>, counted: metrics::Counter) -> Self {
        Settlement {
            ack: Some(ack),
            hand_backs,
            counted,
        }
    }

    pub(crate) async fn ack(mut self) {
        if let Some(ack) = self.ack.take() {
            ack.ack().await;
        }
    }

    pub(crate) async fn nak(mut self, delay: Duration) {
        if let Some(ack) = self.ack.take() {
            ack.nak(delay).await;
        }
    }

    pub(crate) async fn term(mut self) -> Result<(), BoxError> {
        match self.ack.take() {
            Some(ack) => ack.term().await,
            None => Ok(()),
        }
    }
}

impl<A: Acknowledge> Drop for Settlement<A> {
    fn drop(&mut self) {
        let Some(ack) = self.ack.take() else { return };
        self.counted.increment(1);
        let Some(sending) = ack.hand_back() else {
            return;
        };
        // Without a runtime (it is shutting down) the message returns after the ack wait.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let hand_backs = Arc::clone(&self.hand_backs);
            hand_backs.add(1);
            runtime.spawn(async move {
                sending.await;
                hand_backs.done();
            });
        }
    }
}
