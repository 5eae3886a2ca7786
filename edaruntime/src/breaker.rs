//! Circuit breakers (DESIGN.md §3) that pause consumption. A breaker is named and shared by the
//! handlers that call one downstream (`#[handler(breaker = "smtp")]`), one state per breaker
//! per running app. Breakers elsewhere (gobreaker, resilience4j, Polly, MassTransit) reject
//! calls while open, which sends every message of an outage through its retries into the
//! dead-letter queue; here, while a breaker is open, the consume driver takes no message for
//! the handlers behind it, and the messages wait in the broker with no attempt spent.
//!
//! - closed → open: at least `min_calls` calls in the sliding `window`, and a share of
//!   failures of at least `failure_ratio`;
//! - open → half-open after the open period; half-open lets exactly `half_open_probes`
//!   messages through;
//! - half-open → closed when every probe succeeds; → open on any failed probe, for twice the
//!   last period (at most `max_open_for`).
//!
//! Failures are retryable errors, timeouts, panics, and calls slower than `slow_call` (when
//! set). Permanent errors, undecodable payloads and duplicates say nothing about the
//! downstream and are not counted. Every method takes the time, so the transitions are tested
//! without waiting.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::observe::BreakerMetrics;

/// How a circuit breaker decides; see [`crate::app::AppBuilder::breaker`].
///
/// ```
/// use std::time::Duration;
/// use eda::BreakerConfig;
///
/// let smtp = BreakerConfig::default()
///     .failure_ratio(0.5)
///     .min_calls(10)
///     .window(Duration::from_secs(30))
///     .open_for(Duration::from_secs(10))
///     .half_open_probes(1)
///     .max_open_for(Duration::from_secs(300))
///     .slow_call(Duration::from_secs(5));
/// # let _ = smtp;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct BreakerConfig {
    failure_ratio: f64,
    min_calls: u32,
    window: Duration,
    open_for: Duration,
    half_open_probes: u32,
    max_open_for: Duration,
    slow_call: Option<Duration>,
    pause_consumer: bool,
}

impl Default for BreakerConfig {
    /// Half the calls failing (a few bad messages do not trip it), at least 10 calls in 30 s
    /// (a quiet handler is not judged on two calls), open for 10 s doubling up to 5 min (a
    /// long outage is probed a few times an hour, not hammered), one probe, no slow-call limit.
    fn default() -> Self {
        BreakerConfig {
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
            max_open_for: Duration::from_secs(300),
            slow_call: None,
            pause_consumer: false,
        }
    }
}

impl BreakerConfig {
    /// Opens when at least this share of the calls in the window failed (default 0.5;
    /// above 0, at most 1).
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self
    }

    /// Judges the failure ratio only once the window holds this many calls (default 10).
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.min_calls = calls;
        self
    }

    /// The sliding window the failure ratio is taken over (default 30 s), kept in tenths.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long the breaker stays open after it trips from closed (default 10 s).
    pub fn open_for(mut self, open_for: Duration) -> Self {
        self.open_for = open_for;
        self
    }

    /// Messages let through while half-open; all must succeed to close (default 1).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// The longest open period: each failed probe doubles the period up to this (default
    /// 5 min), as MassTransit's reset interval grows.
    pub fn max_open_for(mut self, max: Duration) -> Self {
        self.max_open_for = max;
        self
    }

    /// A call that runs longer than this counts as a failure, even when it succeeds (its
    /// message is acked all the same). Off by default.
    pub fn slow_call(mut self, limit: Duration) -> Self {
        self.slow_call = Some(limit);
        self
    }

    /// On NATS, also pause the durable consumers of the handlers behind the breaker on the
    /// server for the open period (`$JS.API.CONSUMER.PAUSE`, nats-server 2.11 and later), so
    /// that every instance of the service stops at once, not only the one whose calls failed.
    /// On an older server this is a startup warning and only this instance pauses. Off by
    /// default; no effect in memory.
    pub fn pause_consumer(mut self, pause: bool) -> Self {
        self.pause_consumer = pause;
        self
    }

    /// Whether the durable consumers pause on the server too (see
    /// [`BreakerConfig::pause_consumer`]).
    pub(crate) fn pauses_consumer(&self) -> bool {
        self.pause_consumer
    }

    /// What is wrong with this configuration of breaker `name`, one line each.
    pub(crate) fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |what: String| problems.push(format!("breaker `{name}`: {what}"));
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            problem(format!(
                "failure_ratio must be above 0 and at most 1 (0.5: half the calls), got {}",
                self.failure_ratio
            ));
        }
        if self.min_calls == 0 {
            problem("min_calls must be at least 1".to_owned());
        }
        if self.window.is_zero() {
            problem("window must be longer than zero".to_owned());
        }
        if self.open_for.is_zero() {
            problem("open_for must be longer than zero".to_owned());
        }
        if self.half_open_probes == 0 {
            problem("half_open_probes must be at least 1".to_owned());
        }
        if self.max_open_for < self.open_for {
            problem(format!(
                "max_open_for ({}) is shorter than open_for ({})",
                humantime::format_duration(self.max_open_for),
                humantime::format_duration(self.open_for)
            ));
        }
        if self.slow_call.is_some_and(|d| d.is_zero()) {
            problem("slow_call must be longer than zero".to_owned());
        }
        problems
    }
}

/// Where a circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// A few probe messages are let through to test the downstream.
    HalfOpen,
    /// Nothing is taken for the handlers behind it.
    Open,
}

impl BreakerState {
    /// `closed`, `half_open`, `open` (the `to` label of the transitions metric).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The `eda_circuit_breaker_state` value: 0 closed, 1 half-open, 2 open.
    fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    fn from_code(code: u8) -> BreakerState {
        match code {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one finished call counts for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Succeeded,
    Failed,
    /// Says nothing about the downstream (permanent error, undecodable, duplicate).
    NotCounted,
}

/// What a consume loop may take for the handler behind a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Closed,
    /// Half-open: at most this many more messages.
    Probes(usize),
    /// Nothing until the state changes (or, when set, this time comes: the open period ends).
    Wait(Option<Instant>),
}

/// What becomes of a message taken for the handler behind a breaker.
#[derive(Debug)]
pub(crate) enum Admit {
    Run,
    /// Run it as a probe; its outcome decides the half-open state.
    Probe(Probe),
    /// Hand it back unstarted, to come back after this delay.
    HandBack(Duration),
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    /// `until`: `None` when tripped by hand (open until reset).
    Open {
        until: Option<Instant>,
        period: Duration,
    },
    /// `round` tells the half-open periods apart: a probe's outcome counts only in its own.
    HalfOpen {
        period: Duration,
        admitted: u32,
        passed: u32,
        round: u64,
    },
}

/// Calls and failures in the last `window`, in ten slots of a tenth each, counted without a
/// lock. Two racing calls may lose one count when a slot turns over: the ratio is approximate
/// by that much.
struct Window {
    origin: Instant,
    slot_nanos: u64,
    slots: [Slot; SLOTS],
}

const SLOTS: usize = 10;

#[derive(Default)]
struct Slot {
    /// Which tenth (counted from `origin`, from 1) the slot holds; 0: none yet.
    tenth: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
}

impl Window {
    fn new(window: Duration, origin: Instant) -> Window {
        let slot_nanos = u64::try_from((window / SLOTS as u32).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Window {
            origin,
            slot_nanos,
            slots: Default::default(),
        }
    }

    fn tenth(&self, now: Instant) -> u64 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        elapsed / self.slot_nanos + 1
    }

    fn add(&self, now: Instant, failed: bool) {
        let tenth = self.tenth(now);
        let slot = &self.slots[(tenth % SLOTS as u64) as usize];
        let held = slot.tenth.load(Ordering::Acquire);
        if held != tenth
            && slot
                .tenth
                .compare_exchange(held, tenth, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.calls.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (calls, failures) in the window ending now.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let tenth = self.tenth(now);
        self.slots
            .iter()
            .filter(|slot| {
                let held = slot.tenth.load(Ordering::Acquire);
                held != 0 && held <= tenth && tenth - held < SLOTS as u64
            })
            .fold((0, 0), |(calls, failures), slot| {
                (
                    calls + slot.calls.load(Ordering::Relaxed),
                    failures + slot.failures.load(Ordering::Relaxed),
                )
            })
    }

    fn clear(&self) {
        for slot in &self.slots {
            slot.tenth.store(0, Ordering::Release);
        }
    }
}

struct Shared {
    name: Arc<str>,
    config: BreakerConfig,
    /// [`BreakerState::code`] of `phase`, read without the lock on every message.
    state: AtomicU8,
    window: Window,
    phase: Mutex<Phase>,
    /// Wakes the consume loops waiting on this breaker.
    changes: watch::Sender<()>,
    /// Half-open periods so far.
    rounds: AtomicU64,
    metrics: BreakerMetrics,
}

/// A circuit breaker shared by the handlers that name it. Cheap to clone; from
/// [`crate::app::RunningApp::breaker`] for operators and tests.
///
/// ```
/// # use eda::BreakerState;
/// # async fn demo(app: eda::RunningApp) {
/// if let Some(smtp) = app.breaker("smtp") {
///     smtp.trip(); // stop the mail handlers until reset
///     assert_eq!(smtp.state(), BreakerState::Open);
///     smtp.reset();
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

fn lock(phase: &Mutex<Phase>) -> MutexGuard<'_, Phase> {
    // Every critical section leaves a whole phase behind: a panic cannot leave it torn.
    phase.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Breaker {
    pub(crate) fn new(name: &str, config: BreakerConfig) -> Breaker {
        Breaker {
            shared: Arc::new(Shared {
                name: Arc::from(name),
                window: Window::new(config.window, Instant::now()),
                config,
                state: AtomicU8::new(BreakerState::Closed.code()),
                phase: Mutex::new(Phase::Closed),
                changes: watch::Sender::new(()),
                rounds: AtomicU64::new(0),
                metrics: BreakerMetrics::new(name),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The state now (an open breaker whose period ran out reads half-open).
    pub fn state(&self) -> BreakerState {
        if self.is_closed() {
            return BreakerState::Closed;
        }
        let mut phase = lock(&self.shared.phase);
        self.refresh(&mut phase, Instant::now());
        BreakerState::from_code(self.shared.state.load(Ordering::Acquire))
    }

    /// Forces the breaker open until [`Breaker::reset`]: the handlers behind it stop taking
    /// messages; messages already taken and not started go back to the broker.
    pub fn trip(&self) {
        let mut phase = lock(&self.shared.phase);
        let period = match *phase {
            Phase::Open { period, .. } | Phase::HalfOpen { period, .. } => period,
            Phase::Closed => self.shared.config.open_for,
        };
        self.move_to(
            &mut phase,
            Phase::Open {
                until: None,
                period,
            },
            "tripped by hand",
        );
    }

    /// Closes the breaker, forgetting the calls seen so far.
    pub fn reset(&self) {
        let mut phase = lock(&self.shared.phase);
        self.shared.window.clear();
        self.move_to(&mut phase, Phase::Closed, "reset by hand");
    }

    /// Wakes on every state change.
    pub(crate) fn changes(&self) -> watch::Receiver<()> {
        self.shared.changes.subscribe()
    }

    /// The breaker's configuration.
    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// How much longer the breaker stays open (`max_open_for` when tripped by hand); `None`
    /// unless it is open.
    pub(crate) fn open_for_now(&self, now: Instant) -> Option<Duration> {
        if self.is_closed() {
            return None;
        }
        let mut phase = lock(&self.shared.phase);
        self.refresh(&mut phase, now);
        match *phase {
            Phase::Open {
                until: Some(until), ..
            } => Some(until.saturating_duration_since(now)),
            Phase::Open { until: None, .. } => Some(self.shared.config.max_open_for),
            Phase::Closed | Phase::HalfOpen { .. } => None,
        }
    }

    /// One atomic load: what the hot path pays for a closed breaker.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == BreakerState::Closed.code()
    }

    /// What a consume loop may take now.
    pub(crate) fn gate(&self, now: Instant) -> Gate {
        if self.is_closed() {
            return Gate::Closed;
        }
        let mut phase = lock(&self.shared.phase);
        self.refresh(&mut phase, now);
        match *phase {
            Phase::Closed => Gate::Closed,
            Phase::Open { until, .. } => Gate::Wait(until),
            Phase::HalfOpen { admitted, .. } => {
                match self.shared.config.half_open_probes.saturating_sub(admitted) {
                    0 => Gate::Wait(None),
                    free => Gate::Probes(free as usize),
                }
            }
        }
    }

    /// Decides about a message just taken for a handler behind this breaker.
    pub(crate) fn admit(&self, now: Instant) -> Admit {
        if self.is_closed() {
            return Admit::Run;
        }
        let mut phase = lock(&self.shared.phase);
        self.refresh(&mut phase, now);
        let config = &self.shared.config;
        // Back when the open time that remains is over, and after `open_for` at most: while
        // open nothing is pulled, so only a pull request sent before it opened could bring
        // the message again, and after a `reset` it is not kept waiting for long.
        let delay = match &mut *phase {
            Phase::Closed => return Admit::Run,
            Phase::Open {
                until: Some(until), ..
            } => until.saturating_duration_since(now),
            Phase::Open {
                until: None,
                period,
            } => *period,
            Phase::HalfOpen {
                admitted,
                period,
                round,
                ..
            } => {
                if *admitted < config.half_open_probes {
                    *admitted += 1;
                    return Admit::Probe(Probe {
                        breaker: Some(self.clone()),
                        round: *round,
                    });
                }
                // Until the probes are done.
                *period
            }
        };
        Admit::HandBack(delay.min(config.open_for))
    }

    /// Counts a call admitted while the breaker was closed (calls finishing after it opened
    /// are not counted: the state is decided).
    pub(crate) fn record(&self, now: Instant, call: Call) {
        let failed = match call {
            Call::NotCounted => return,
            Call::Succeeded => false,
            Call::Failed => true,
        };
        if !self.is_closed() {
            return;
        }
        let window = &self.shared.window;
        window.add(now, failed);
        if !failed {
            return;
        }
        let config = &self.shared.config;
        let (calls, failures) = window.totals(now);
        if calls < config.min_calls || f64::from(failures) < config.failure_ratio * f64::from(calls)
        {
            return;
        }
        let mut phase = lock(&self.shared.phase);
        if matches!(*phase, Phase::Closed) {
            let why = format!(
                "{failures} of {calls} calls failed in the last {} (failure_ratio {})",
                humantime::format_duration(config.window),
                config.failure_ratio
            );
            let period = config.open_for;
            self.move_to(
                &mut phase,
                Phase::Open {
                    until: now.checked_add(period),
                    period,
                },
                &why,
            );
        }
    }

    /// Whether the call was slow enough to count as a failure.
    pub(crate) fn is_slow(&self, took: Duration) -> bool {
        self.shared
            .config
            .slow_call
            .is_some_and(|limit| took > limit)
    }

    /// An open breaker whose period ran out is half-open.
    fn refresh(&self, phase: &mut Phase, now: Instant) {
        if let Phase::Open {
            until: Some(until),
            period,
        } = *phase
        {
            if now >= until {
                self.move_to(
                    phase,
                    Phase::HalfOpen {
                        period,
                        admitted: 0,
                        passed: 0,
                        round: self.shared.rounds.fetch_add(1, Ordering::Relaxed) + 1,
                    },
                    "the open period is over; letting probes through",
                );
            }
        }
    }

    /// A probe of half-open `round` finished; `Some(delay)`: it failed, hand its message back
    /// with that delay (unstarted, as it were: an outage spends no attempt, also not on
    /// probes).
    fn finish_probe(&self, now: Instant, call: Call, of_round: u64) -> Option<Duration> {
        let mut phase = lock(&self.shared.phase);
        let config = &self.shared.config;
        match (&mut *phase, call) {
            (Phase::HalfOpen { round, .. }, _) if *round != of_round => None,
            (
                Phase::HalfOpen {
                    admitted, passed, ..
                },
                Call::Succeeded,
            ) => {
                *passed += 1;
                if *passed >= config.half_open_probes {
                    let why = format!("{} of {} probes succeeded", *passed, *admitted);
                    self.shared.window.clear();
                    self.move_to(&mut phase, Phase::Closed, &why);
                }
                None
            }
            (Phase::HalfOpen { period, .. }, Call::Failed) => {
                let period = period.saturating_mul(2).min(config.max_open_for);
                let why = format!(
                    "a probe failed; open for {}",
                    humantime::format_duration(period)
                );
                self.move_to(
                    &mut phase,
                    Phase::Open {
                        until: now.checked_add(period),
                        period,
                    },
                    &why,
                );
                // A little past the next half-open, so that the next probe is another
                // message: one that fails for its own reasons cannot hold the breaker open.
                Some(period.saturating_add(period / 10))
            }
            (Phase::HalfOpen { admitted, .. }, Call::NotCounted) => {
                *admitted = admitted.saturating_sub(1);
                self.shared.changes.send_replace(());
                None
            }
            // Opened again meanwhile (by hand, or by another probe): the failure is the
            // outage's, not the message's.
            (Phase::Open { until, period }, Call::Failed) => Some(
                match until {
                    Some(until) => until.saturating_duration_since(now),
                    None => *period,
                }
                .min(config.open_for),
            ),
            _ => None,
        }
    }

    /// A probe of half-open `round` ended without an outcome (cut off, or never run): its
    /// place is free.
    fn release_probe(&self, of_round: u64) {
        let mut phase = lock(&self.shared.phase);
        if let Phase::HalfOpen {
            admitted, round, ..
        } = &mut *phase
        {
            if *round == of_round {
                *admitted = admitted.saturating_sub(1);
                self.shared.changes.send_replace(());
            }
        }
    }

    fn move_to(&self, phase: &mut Phase, to: Phase, why: &str) {
        let from = state_of(phase);
        *phase = to;
        let state = state_of(phase);
        self.shared.state.store(state.code(), Ordering::Release);
        self.shared.changes.send_replace(());
        if from == state {
            return;
        }
        self.shared.metrics.moved(state.code());
        let breaker = &*self.shared.name;
        match to {
            Phase::Open { until, period } => tracing::warn!(
                breaker,
                from = %from,
                to = %state,
                open_for = %until.map_or("until reset".to_owned(), |_| humantime::format_duration(period).to_string()),
                "circuit breaker opened: {why}; the handlers behind it take no messages"
            ),
            _ => {
                tracing::info!(breaker, from = %from, to = %state, "circuit breaker {state}: {why}")
            }
        }
    }
}

fn state_of(phase: &Phase) -> BreakerState {
    match phase {
        Phase::Closed => BreakerState::Closed,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

/// A message let through a half-open breaker. Its outcome is given with [`Probe::finish`];
/// dropped without one (cut off, or it never reached the handler), its place is free again.
#[derive(Debug)]
pub(crate) struct Probe {
    breaker: Option<Breaker>,
    round: u64,
}

impl Probe {
    /// The probe's call ended; `Some(delay)`: it failed, hand its message back with `delay`.
    pub(crate) fn finish(mut self, now: Instant, call: Call) -> Option<Duration> {
        self.breaker.take()?.finish_probe(now, call, self.round)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.release_probe(self.round);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker(config: BreakerConfig) -> Breaker {
        Breaker::new("test", config)
    }

    fn quick() -> BreakerConfig {
        BreakerConfig::default()
            .min_calls(4)
            .failure_ratio(0.5)
            .window(10 * S)
            .open_for(S)
            .max_open_for(4 * S)
    }

    fn fail(b: &Breaker, now: Instant, times: u32) {
        for _ in 0..times {
            b.record(now, Call::Failed);
        }
    }

    fn probe(b: &Breaker, now: Instant) -> Probe {
        match b.admit(now) {
            Admit::Probe(probe) => probe,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn it_opens_on_the_failure_ratio_once_min_calls_were_seen() {
        let b = breaker(quick());
        let t = Instant::now();
        fail(&b, t, 3);
        assert_eq!(b.gate(t), Gate::Closed, "3 calls: fewer than min_calls");
        for _ in 0..5 {
            b.record(t, Call::Succeeded);
        }
        fail(&b, t, 1);
        assert_eq!(b.gate(t), Gate::Closed, "4 of 9 failed: not yet");
        fail(&b, t, 1);
        assert_eq!(b.state(), BreakerState::Open, "5 of 10");
        assert_eq!(b.gate(t), Gate::Wait(Some(t + S)));
        assert!(matches!(b.admit(t + S / 4), Admit::HandBack(d) if d == S * 3 / 4));
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let b = breaker(quick());
        let t = Instant::now();
        fail(&b, t, 3);
        fail(&b, t + 11 * S, 1);
        assert_eq!(
            b.gate(t + 11 * S),
            Gate::Closed,
            "one failure in the window"
        );
        fail(&b, t + 12 * S, 3);
        assert_eq!(b.gate(t + 12 * S), Gate::Wait(Some(t + 13 * S)));
    }

    #[test]
    fn permanent_errors_and_duplicates_do_not_count() {
        let b = breaker(quick());
        let t = Instant::now();
        for _ in 0..100 {
            b.record(t, Call::NotCounted);
        }
        fail(&b, t, 3);
        assert_eq!(b.gate(t), Gate::Closed);
    }

    #[test]
    fn half_open_lets_exactly_the_probes_through_and_closes_when_they_succeed() {
        let b = breaker(quick().half_open_probes(2));
        let t = Instant::now();
        fail(&b, t, 4);
        let later = t + S;
        assert_eq!(b.gate(later), Gate::Probes(2));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let first = probe(&b, later);
        let second = probe(&b, later);
        assert!(matches!(b.admit(later), Admit::HandBack(d) if d == S));
        assert_eq!(b.gate(later), Gate::Wait(None));
        assert_eq!(first.finish(later, Call::Succeeded), None);
        assert_eq!(b.state(), BreakerState::HalfOpen, "one of two");
        assert_eq!(second.finish(later, Call::Succeeded), None);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, later, 3);
        assert_eq!(b.gate(later), Gate::Closed, "the window starts afresh");
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_the_period_up_to_the_cap() {
        let b = breaker(quick());
        let mut t = Instant::now();
        fail(&b, t, 4);
        let mut expected = [2 * S, 4 * S, 4 * S].into_iter();
        let mut period = S;
        for _ in 0..3 {
            t += period;
            let delay = probe(&b, t).finish(t, Call::Failed).expect("handed back");
            period = expected.next().unwrap();
            assert_eq!(b.gate(t), Gate::Wait(Some(t + period)));
            assert!(
                delay > period,
                "the failed probe comes back after the next half-open"
            );
        }
        t += period;
        probe(&b, t).finish(t, Call::Succeeded);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, t, 4);
        assert_eq!(
            b.gate(t),
            Gate::Wait(Some(t + S)),
            "a trip from closed: open_for again"
        );
    }

    #[test]
    fn a_probe_without_an_outcome_frees_its_place() {
        let b = breaker(quick());
        let t = Instant::now();
        fail(&b, t, 4);
        drop(probe(&b, t + S));
        assert_eq!(b.gate(t + S), Gate::Probes(1));
        assert_eq!(probe(&b, t + S).finish(t + S, Call::NotCounted), None);
        assert_eq!(b.gate(t + S), Gate::Probes(1));
    }

    #[test]
    fn a_probe_counts_only_in_its_own_half_open_period() {
        let b = breaker(quick().half_open_probes(2));
        let t = Instant::now();
        fail(&b, t, 4);
        let old = probe(&b, t + S);
        let failing = probe(&b, t + S);
        assert!(
            failing.finish(t + S, Call::Failed).is_some(),
            "open again, for 2 s"
        );
        let later = t + 3 * S;
        assert_eq!(b.gate(later), Gate::Probes(2), "a new half-open period");
        let new = probe(&b, later);
        assert_eq!(old.finish(later, Call::Succeeded), None);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "the old probe's success does not count"
        );
        assert_eq!(b.gate(later), Gate::Probes(1));
        drop(new);
        assert_eq!(b.gate(later), Gate::Probes(2));
    }

    #[test]
    fn huge_periods_do_not_overflow() {
        let b = breaker(quick().open_for(Duration::MAX).max_open_for(Duration::MAX));
        let t = Instant::now();
        fail(&b, t, 4);
        assert_eq!(b.gate(t), Gate::Wait(None), "open until reset");
        b.reset();
        assert_eq!(b.gate(t), Gate::Closed);
    }

    #[test]
    fn trip_holds_it_open_until_reset() {
        let b = breaker(quick());
        let t = Instant::now();
        b.trip();
        assert_eq!(b.gate(t + 3600 * S), Gate::Wait(None));
        assert!(matches!(b.admit(t), Admit::HandBack(d) if d == S));
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(matches!(b.admit(t), Admit::Run));
    }

    #[test]
    fn every_mistake_in_a_config_is_reported() {
        assert!(BreakerConfig::default().problems("smtp").is_empty());
        let problems = BreakerConfig::default()
            .failure_ratio(1.5)
            .min_calls(0)
            .window(Duration::ZERO)
            .open_for(Duration::from_secs(60))
            .max_open_for(Duration::from_secs(30))
            .half_open_probes(0)
            .slow_call(Duration::ZERO)
            .problems("smtp");
        assert_eq!(
            problems,
            [
                "breaker `smtp`: failure_ratio must be above 0 and at most 1 (0.5: half the calls), got 1.5",
                "breaker `smtp`: min_calls must be at least 1",
                "breaker `smtp`: window must be longer than zero",
                "breaker `smtp`: half_open_probes must be at least 1",
                "breaker `smtp`: max_open_for (30s) is shorter than open_for (1m)",
                "breaker `smtp`: slow_call must be longer than zero",
            ]
        );
        assert_eq!(
            BreakerConfig::default()
                .failure_ratio(f64::NAN)
                .problems("x")
                .len(),
            1
        );
    }
}
