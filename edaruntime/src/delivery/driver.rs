//! The consume driver both transports share: concurrency permits, taking messages from a
//! [`Source`] no faster than permits free up (and a little ahead only while handlers are
//! quick against the ack wait), one task per message with in-progress acks
//! while its handler runs, hand-back of what is cut off or never started, the pause while the
//! handler's circuit breaker is open, and the drain at shutdown. Transports supply only the
//! [`Source`] and its [`Acknowledge`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::runtime::HandlerRuntime;
use super::settlement::Settlement;
use crate::breaker::{Admit, Breaker, Gate};
use crate::lifecycle::{Outstanding, Signals};
use crate::port::{Acknowledge, Delivery, Source};

/// How long a stopping loop waits for its hand-back naks to be sent.
const HAND_BACK_LIMIT: Duration = Duration::from_secs(5);

/// Runs one app instance's share of a handler's consumer until `signals` says stop, with
/// at most `concurrency` of the source's messages in the handler at once.
pub(crate) async fn drive<S: Source>(
    runtime: Arc<HandlerRuntime>,
    mut source: S,
    signals: Signals,
    concurrency: usize,
) {
    let concurrency = concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let hand_backs = Arc::new(Outstanding::default());
    let handed_back = runtime.metrics.handed_back();
    let busy = Arc::new(SlotTime::default());
    let inline = concurrency == 1 && source.ack_wait().is_none();
    let draining = signals.draining();
    let stopped = signals.stopped();
    tokio::pin!(draining, stopped);
    let breaker = runtime.breaker.clone();
    let mut changes = breaker.as_ref().map(Breaker::changes);
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                () = &mut draining => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            },
        };
        // Read after the slot is free: the calls that held the slots may have opened it.
        // At most this many messages while the breaker is half-open.
        let mut probes = None;
        if let (Some(breaker), Some(changes)) = (&breaker, &mut changes) {
            if !breaker.is_closed() {
                changes.borrow_and_update();
                match breaker.gate(tokio::time::Instant::now()) {
                    Gate::Closed => {}
                    Gate::Probes(free) => probes = Some(free),
                    Gate::Wait(until) => {
                        drop(permit);
                        // Open: nothing is asked for; what the source still brings (a pull
                        // request sent before the breaker opened) goes back unstarted.
                        tokio::select! {
                            biased;
                            () = &mut draining => break,
                            _ = changes.changed() => {}
                            () = sleep_until(until) => {}
                            next = source.next(0, 0) => if let Some((delivery, ack)) = next {
                                hand_back(&runtime, breaker, delivery, ack).await;
                            },
                        }
                        continue;
                    }
                }
            }
        }
        let mut room = permits.available_permits() + 1;
        let mut ahead = match (source.ack_wait(), busy.mean()) {
            (Some(ack_wait), Some(mean)) => ahead_for(ack_wait, mean, concurrency),
            _ => 0,
        };
        if let Some(free) = probes {
            (room, ahead) = (room.min(free), 0);
        }
        let next = tokio::select! {
            biased;
            () = &mut draining => break,
            next = source.next(room, ahead) => next,
        };
        let Some((delivery, ack)) = next else {
            continue;
        };
        let probe = match &breaker {
            None => None,
            Some(breaker) => match breaker.admit(tokio::time::Instant::now()) {
                Admit::Run => None,
                Admit::Probe(probe) => Some(probe),
                Admit::HandBack(delay) => {
                    // The breaker opened while the message was on its way.
                    drop(permit);
                    hand_back_after(&runtime, delivery, ack, delay).await;
                    continue;
                }
            },
        };
        // Made before the task: a task aborted before its first poll hands back too.
        let settlement = Settlement::new(ack.clone(), Arc::clone(&hand_backs), handed_back.clone());
        let runtime = Arc::clone(&runtime);
        let busy = Arc::clone(&busy);
        let timed = source.ack_wait().is_some();
        let work = async move {
            // The slot time only paces pulling ahead of an ack wait.
            let started = timed.then(tokio::time::Instant::now);
            let deliver = runtime.deliver(delivery, settlement, Some(permit), probe);
            match ack.progress_period() {
                Some(period) => {
                    tokio::select! {
                        biased;
                        () = deliver => {}
                        () = keep_in_progress(&ack, period) => {}
                    }
                }
                None => deliver.await,
            }
            if let Some(started) = started {
                busy.record(started.elapsed());
            }
        };
        if inline {
            // One at a time on a source whose settling costs nothing (in memory): run it here
            // rather than spawn a task per message. On a broker the task lets the id's record
            // and the ack overlap with the next message. Dropped at the shutdown deadline, its
            // settlement hands the message back.
            tokio::select! {
                biased;
                () = work => {}
                () = &mut stopped => break,
            }
        } else {
            tasks.spawn(work);
            while tasks.try_join_next().is_some() {}
        }
    }
    source.release().await;
    finish_in_flight(&mut tasks, signals.stopped()).await;
    // The naks of cut-off handlers go out before the app closes the connection.
    if tokio::time::timeout(HAND_BACK_LIMIT, hand_backs.wait_zero())
        .await
        .is_err()
    {
        tracing::debug!("handing back cut-off messages timed out; they return after the ack wait");
    }
}

/// Hands back a message taken while `breaker` is open, to come back when it half-opens.
async fn hand_back<A: Acknowledge>(
    runtime: &HandlerRuntime,
    breaker: &Breaker,
    delivery: Delivery,
    ack: A,
) {
    let delay = match breaker.admit(tokio::time::Instant::now()) {
        Admit::HandBack(delay) => delay,
        // It half-opened meanwhile: the next turn of the loop takes what is due.
        Admit::Run | Admit::Probe(_) => Duration::ZERO,
    };
    hand_back_after(runtime, delivery, ack, delay).await;
}

async fn hand_back_after<A: Acknowledge>(
    runtime: &HandlerRuntime,
    delivery: Delivery,
    ack: A,
    delay: Duration,
) {
    tracing::debug!(delay = ?delay, "the circuit breaker is open; handing the message back unstarted");
    runtime.hand_back_unstarted(&delivery, &ack, delay).await;
}

async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// Messages a loop may pull ahead of its free slots: as many as its slots get through in a
/// tenth of the ack wait at their recent pace (a message pulled ahead then starts long before
/// its ack wait runs out), at most `max(64, 2 × concurrency)`.
fn ahead_for(ack_wait: Duration, mean: Duration, concurrency: usize) -> usize {
    let budget = ack_wait / 10;
    let per_slot = budget.as_nanos() / mean.as_nanos().max(1);
    let cap = (2 * concurrency).max(64);
    usize::try_from(per_slot.saturating_mul(concurrency as u128))
        .unwrap_or(usize::MAX)
        .min(cap)
}

/// How long a slot is busy with one message (handler, record, settle), as a moving average:
/// the loop lets messages be pulled ahead of free slots only while this is short against the
/// ack wait.
#[derive(Debug, Default)]
struct SlotTime {
    /// Nanoseconds; 0 until the first message is done.
    mean: AtomicU64,
}

impl SlotTime {
    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        // A lost update between two finishing tasks only skips one sample.
        let old = self.mean.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.mean.store(new.max(1), Ordering::Relaxed);
    }

    fn mean(&self) -> Option<Duration> {
        match self.mean.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// Sends in-progress acks every `period` while a handler runs (and while its id is recorded
/// or its dead letter stored), so the broker does not redeliver a message still worked on.
async fn keep_in_progress<A: Acknowledge>(ack: &A, period: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        // Boxed: the client's publish future is large, and this one is part of every
        // message's task while it is sent only for long handlers.
        Box::pin(ack.in_progress()).await;
    }
}

/// Waits for a consume loop's spawned handlers after it stopped taking messages. Past the
/// shutdown deadline (`stopped`) the rest are dropped, which hands their messages back.
async fn finish_in_flight(tasks: &mut JoinSet<()>, stopped: impl std::future::Future<Output = ()>) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            next = tasks.join_next() => if next.is_none() { return },
            () = &mut stopped => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_pulled_ahead_only_while_slots_finish_well_within_the_ack_wait() {
        let wait = Duration::from_secs(30);
        assert_eq!(
            ahead_for(wait, Duration::from_micros(50), 1),
            64,
            "quick: up to the cap"
        );
        assert_eq!(ahead_for(wait, Duration::from_micros(50), 100), 200);
        assert_eq!(
            ahead_for(wait, Duration::from_secs(1), 1),
            3,
            "3 s of work ahead"
        );
        assert_eq!(
            ahead_for(wait, Duration::from_secs(4), 1),
            0,
            "slow: none ahead"
        );
        assert_eq!(
            ahead_for(Duration::from_secs(3), Duration::from_millis(2500), 1),
            0
        );
    }

    #[test]
    fn the_slot_time_is_a_moving_average() {
        let busy = SlotTime::default();
        assert_eq!(busy.mean(), None, "unknown until a message is done");
        busy.record(Duration::from_millis(80));
        assert_eq!(busy.mean(), Some(Duration::from_millis(80)));
        for _ in 0..100 {
            busy.record(Duration::from_millis(8));
        }
        let mean = busy.mean().unwrap();
        assert!(mean < Duration::from_millis(9), "{mean:?}");
    }
}
