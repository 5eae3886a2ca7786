//! Binding handlers to the broker, and the triggers of actions files: each trigger is a
//! consumer of its own that a reload (SIGHUP, or `RunningApp::reload_actions`) starts, stops
//! after draining, or starts again with other settings, while the rest of the app runs on.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Mutex};

use crate::actions::{ActionsError, Reloaded, Runner};
use crate::backend::Backend;
use crate::breaker::Breaker;
use crate::delivery::{HandlerRuntime, RuntimeSet};
use crate::error::Result;
use crate::handler::{HandlerDescriptor, Scope, StateMap};
use crate::idempotency::IdempotencyStore;
use crate::lifecycle::{Lifecycle, Signals};
use crate::port::Transport;
use crate::publish::Publisher;

/// What binding a handler takes: the broker, the app's publisher, states and breakers.
#[derive(Clone)]
pub(super) struct Binder {
    pub(super) backend: Backend,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) store: Arc<dyn IdempotencyStore>,
    pub(super) publisher: Publisher,
    pub(super) states: StateMap,
    pub(super) breakers: Vec<Breaker>,
}

impl fmt::Debug for Binder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binder")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Binder {
    /// The handler's runtime, and its consume loop bound to the broker (to be spawned).
    pub(super) async fn bind(
        &self,
        descriptor: &'static HandlerDescriptor,
        signals: Signals,
    ) -> Result<(Arc<HandlerRuntime>, BoxFuture<'static, ()>)> {
        let scope = Arc::new(Scope {
            handler: descriptor.name.to_owned(),
            emits: descriptor.emits,
            publisher: self.publisher.clone(),
            states: self.states.clone(),
        });
        let breaker = descriptor
            .options
            .breaker
            .and_then(|name| self.breakers.iter().find(|b| b.name() == name).cloned());
        let runtime = Arc::new(HandlerRuntime::new(
            descriptor,
            scope,
            Arc::clone(&self.transport),
            Arc::clone(&self.store),
            breaker,
        ));
        let consume = self.backend.bind(&runtime, signals).await?;
        Ok((runtime, consume))
    }
}

/// A trigger's consumer: its own lifecycle (drained alone when a reload stops it; it follows
/// the app's too), and whether its consume loop ended.
struct RunningTrigger {
    own: Lifecycle,
    done: watch::Receiver<bool>,
}

/// The triggers of an app's actions files, as consumers that come and go.
pub(super) struct Triggers {
    runner: Arc<Runner>,
    binder: Binder,
    app: Arc<Lifecycle>,
    runtimes: RuntimeSet,
    /// The app's other handlers: a trigger may not take one of their names.
    handlers: Vec<&'static str>,
    /// How long a stopped trigger may take to finish what it is doing.
    drain_timeout: Duration,
    /// Held through a whole reload: reloads come one at a time.
    running: Mutex<HashMap<String, RunningTrigger>>,
}

impl fmt::Debug for Triggers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
    }
}

impl Triggers {
    pub(super) fn new(
        runner: Arc<Runner>,
        binder: Binder,
        app: Arc<Lifecycle>,
        runtimes: RuntimeSet,
        handlers: Vec<&'static str>,
        drain_timeout: Duration,
    ) -> Triggers {
        Triggers {
            runner,
            binder,
            app,
            runtimes,
            handlers,
            drain_timeout,
            running: Mutex::default(),
        }
    }

    /// Whether `name` is one of the actions files' triggers.
    pub(super) fn runs(&self, name: &str) -> bool {
        self.runner.has_trigger(name)
    }

    /// Binds trigger `descriptor` and starts consuming.
    pub(super) async fn start(&self, descriptor: &'static HandlerDescriptor) -> Result<()> {
        let mut running = self.running.lock().await;
        self.start_locked(&mut running, descriptor).await
    }

    async fn start_locked(
        &self,
        running: &mut HashMap<String, RunningTrigger>,
        descriptor: &'static HandlerDescriptor,
    ) -> Result<()> {
        let own = Lifecycle::new();
        let (runtime, consume) = self
            .binder
            .bind(descriptor, self.app.signals_with(&own))
            .await?;
        let (finished, done) = watch::channel(false);
        tokio::spawn(async move {
            consume.await;
            finished.send_replace(true);
        });
        self.runtimes.push(runtime);
        running.insert(descriptor.name.to_owned(), RunningTrigger { own, done });
        Ok(())
    }

    /// Stops the triggers `names` together: no new messages; what is in flight finishes (up to
    /// the drain timeout, then it is cut off and redelivered later). Those `removed` let go of
    /// their consumers for good.
    async fn stop_locked(
        &self,
        running: &mut HashMap<String, RunningTrigger>,
        names: &[String],
        removed: &[String],
    ) {
        let stopping: Vec<(String, RunningTrigger)> = names
            .iter()
            .filter_map(|name| running.remove(name).map(|t| (name.clone(), t)))
            .collect();
        for (_, trigger) in &stopping {
            trigger.own.drain();
        }
        let waits = stopping.iter().map(|(name, trigger)| async move {
            let mut done = trigger.done.clone();
            let drained = tokio::time::timeout(self.drain_timeout, done.wait_for(|d| *d))
                .await
                .is_ok();
            if !drained {
                tracing::warn!(trigger = %name, "drain timeout reached; stopping its in-flight calls");
                trigger.own.stop();
                let _ = done.wait_for(|d| *d).await;
            }
        });
        futures_util::future::join_all(waits).await;
        for (name, _) in &stopping {
            let runtime = self
                .runtimes
                .snapshot()
                .into_iter()
                .find(|r| r.descriptor.name == name.as_str());
            self.runtimes.remove(name);
            if removed.contains(name) {
                if let Some(runtime) = runtime {
                    self.binder.backend.unbind(runtime.durable());
                }
                self.runner.forget(name);
            }
            tracing::info!(trigger = %name, "trigger stopped");
        }
    }

    /// Reads the actions files again and applies them: see [`Runner::reload`].
    pub(super) async fn reload(&self) -> std::result::Result<Reloaded, ActionsError> {
        let mut running = self.running.lock().await;
        let breakers: Vec<&str> = self.binder.breakers.iter().map(Breaker::name).collect();
        let mut plan = self.runner.reload(&self.handlers, &breakers)?;
        self.stop_locked(&mut running, &plan.stop, &plan.report.stopped)
            .await;
        for descriptor in std::mem::take(&mut plan.start) {
            if let Err(e) = self.start_locked(&mut running, descriptor).await {
                // Not running: the next reload sees it as new and tries again.
                self.runner.forget(descriptor.name);
                plan.report.started.retain(|n| n != descriptor.name);
                plan.report.restarted.retain(|n| n != descriptor.name);
                plan.report
                    .need_restart
                    .push(format!("`{}` could not start: {e}", descriptor.name));
            }
        }
        Ok(plan.report)
    }

    /// Waits until every trigger's consume loop ended (the app drains or stops them).
    pub(super) async fn finished(&self) {
        let dones: Vec<watch::Receiver<bool>> = self
            .running
            .lock()
            .await
            .values()
            .map(|t| t.done.clone())
            .collect();
        for mut done in dones {
            let _ = done.wait_for(|d| *d).await;
        }
    }
}

/// Reloads on SIGHUP for as long as the app runs (a file with errors keeps the running
/// triggers, and says why).
pub(super) fn reload_on_hangup(
    triggers: Arc<Triggers>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(async move {
        #[cfg(unix)]
        while hangups.recv().await.is_some() {
            crate::actions::log_reload(&triggers.reload().await);
        }
        #[cfg(not(unix))]
        {
            let _ = triggers;
            std::future::pending::<()>().await;
        }
    })
}
