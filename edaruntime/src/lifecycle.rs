//! The phases of a running app (running, draining, stopped), the signals consume loops watch to
//! know when to stop, the operating system's stop signals, and a waitable count of outstanding
//! work. The bottom of the runtime: it knows nothing of handlers or transports.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{watch, Notify};

/// Where an app is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    Draining,
    Stopped,
}

/// Moves an app through its phases; consume loops watch the [`Signals`] it hands out.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: watch::Sender<Phase>,
}

impl Lifecycle {
    pub(crate) fn new() -> Lifecycle {
        Lifecycle {
            phase: watch::Sender::new(Phase::Running),
        }
    }

    pub(crate) fn signals(&self) -> Signals {
        Signals {
            rx: self.phase.subscribe(),
            own: None,
        }
    }

    /// The app's signals, also following `own`: a consumer that drains when the app does, or
    /// when `own` is drained alone.
    pub(crate) fn signals_with(&self, own: &Lifecycle) -> Signals {
        Signals {
            rx: self.phase.subscribe(),
            own: Some(own.phase.subscribe()),
        }
    }

    /// Stop taking messages; let in-flight handlers finish.
    pub(crate) fn drain(&self) {
        self.phase.send_replace(Phase::Draining);
    }

    /// The shutdown deadline passed: stop in-flight handlers too.
    pub(crate) fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }
}

/// What consume loops watch to know when to stop: an app's phase, and, for a consumer that can
/// be stopped on its own (an actions trigger a reload removes), its own.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    rx: watch::Receiver<Phase>,
    own: Option<watch::Receiver<Phase>>,
}

impl Signals {
    /// Resolves once shutdown started (or the app is gone). The future owns its receiver:
    /// a consume loop pins it once and polls it by reference, rather than registering a new
    /// waiter for every message.
    pub(crate) fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.phase(Phase::Draining)
    }

    /// Resolves once the shutdown deadline passed (or the app is gone).
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.phase(Phase::Stopped)
    }

    fn phase(&self, phase: Phase) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (mut rx, own) = (self.rx.clone(), self.own.clone());
        async move {
            let app = async move {
                let _ = rx.wait_for(|p| *p >= phase).await;
            };
            match own {
                None => app.await,
                Some(mut own) => {
                    let own = async move {
                        let _ = own.wait_for(|p| *p >= phase).await;
                    };
                    tokio::select! {
                        () = app => {}
                        () = own => {}
                    }
                }
            }
        }
    }
}

/// A count of outstanding work that can be waited on until it reaches zero: the in-memory
/// broker's queued and in-flight messages, a consume loop's hand-back naks still being sent.
#[derive(Debug, Default)]
pub(crate) struct Outstanding {
    count: AtomicUsize,
    zero: Notify,
}

impl Outstanding {
    pub(crate) fn add(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn done(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.zero.notify_waiters();
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) async fn wait_zero(&self) {
        loop {
            let zero = self.zero.notified();
            tokio::pin!(zero);
            zero.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            zero.await;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn wait_for_signal() -> crate::error::Result<()> {
    shutdown_signal()?.await;
    Ok(())
}

/// Starts listening for SIGINT and SIGTERM now; the future resolves on the first of them.
pub(crate) fn shutdown_signal() -> crate::error::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            // Without a handler to install there is nothing to stop on: wait forever.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}
