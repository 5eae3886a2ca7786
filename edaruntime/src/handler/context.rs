//! What a handler can use besides its event: [`Context`] (metadata, follow-up publishing)
//! and [`State<T>`] (values the app was given).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use crate::error::PublishError;
use crate::event::{Event, Metadata};
use crate::publish::{PublishOptions, Publisher};

/// Shared state handed to handlers that take `State<T>`; provide it with
/// `App::builder(..).state(value)`.
///
/// ```
/// use eda::State;
///
/// struct Mailer { from: &'static str }
/// let state = State::new(Mailer { from: "noreply@example.com" });
/// assert_eq!(state.from, "noreply@example.com");
/// ```
pub struct State<T: ?Sized>(Arc<T>);

impl<T> State<T> {
    /// Wraps a value (for calling a handler directly in a test).
    pub fn new(value: T) -> State<T> {
        State(Arc::new(value))
    }
}

impl<T: ?Sized> State<T> {
    /// The shared pointer.
    pub fn arc(&self) -> &Arc<T> {
        &self.0
    }
}

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        State(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "State<{}>", std::any::type_name::<T>())
    }
}

/// The state values of an app, by type.
#[derive(Default, Clone)]
pub(crate) struct StateMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl StateMap {
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    pub(crate) fn contains(&self, type_id: TypeId) -> bool {
        self.values.contains_key(&type_id)
    }

    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let value = self.values.get(&TypeId::of::<T>())?;
        Arc::clone(value).downcast::<T>().ok().map(State)
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateMap({} values)", self.values.len())
    }
}

/// Per-handler data every [`Context`] of that handler shares: what the handler may use of
/// its app, given to it rather than the app itself.
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) handler: String,
    /// What the handler declared it publishes (`emits = [..]`); checked in debug builds.
    pub(crate) emits: Option<&'static [&'static str]>,
    pub(crate) publisher: Publisher,
    pub(crate) states: StateMap,
}

/// What a handler can do besides reading its event: publish follow-up events (carrying the
/// correlation id, with this event as their cause), read metadata and shared state.
#[derive(Clone)]
pub struct Context {
    metadata: Arc<Metadata>,
    attempt: u32,
    scope: Arc<Scope>,
    /// What this invocation's follow-ups share (and the clones extractors make).
    follow_ups: Arc<FollowUps>,
}

/// What the follow-up events of one invocation share.
#[derive(Default)]
struct FollowUps {
    /// How many events of each type were published.
    published: Mutex<Vec<(Box<str>, u32)>>,
    /// The trace started for an event that came without one.
    trace: OnceLock<String>,
}

impl Context {
    pub(crate) fn new(metadata: Arc<Metadata>, attempt: u32, scope: Arc<Scope>) -> Context {
        Context {
            metadata,
            attempt,
            scope,
            follow_ups: Arc::default(),
        }
    }

    /// Publishes `event` with this event's correlation id and this event as its cause, in
    /// this event's trace (or, for an event that came without one, a trace this invocation
    /// starts); returns the new event's id once the broker stored it.
    ///
    /// The id is derived from the service, the handler, this event's id, the published
    /// event's name and how many events of that name this invocation published before: a
    /// handler that publishes and then fails publishes the same ids when it runs again, so
    /// the broker's duplicate window drops the repeats and downstream idempotency recognises
    /// them. Publish the events of one type in the same order on every attempt.
    ///
    /// In debug builds, a handler that declares `emits = [..]` gets
    /// [`PublishError::Invalid`] for an event the list does not name.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String, PublishError> {
        let options = self.follow_up(E::NAME, std::any::type_name::<E>())?;
        self.scope.publisher.send(event, options).await
    }

    /// Publishes a payload as event `name` of `version` without a Rust type, as a follow-up
    /// of this event like [`Context::publish`] (same ids, correlation, cause and trace; the
    /// same `emits` check in debug builds). For handlers that forward or build events from
    /// data, such as declared actions (`crate::actions`).
    pub async fn publish_raw(
        &self,
        name: &str,
        version: u32,
        payload: impl Into<Bytes>,
    ) -> Result<String, PublishError> {
        let options = self.follow_up(name, name)?;
        self.scope
            .publisher
            .send_raw(name, version, payload.into(), options)
            .await
    }

    /// The options of this invocation's next follow-up of event `name` (`type_name` names
    /// it in the `emits` message).
    fn follow_up(&self, name: &str, type_name: &str) -> Result<PublishOptions, PublishError> {
        #[cfg(debug_assertions)]
        if let Some(emits) = self.scope.emits {
            if !emits.contains(&name) {
                return Err(PublishError::Invalid(format!(
                    "handler `{}` publishes `{name}`, which its `emits = [..]` does not list: add {} to it (the service's NATS permissions are generated from that list; this check runs in debug builds)",
                    self.scope.handler,
                    type_name.rsplit("::").next().unwrap_or(name),
                )));
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = type_name;
        let index = {
            let mut published = self
                .follow_ups
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match published.iter_mut().find(|(n, _)| **n == *name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    published.push((name.into(), 1));
                    0
                }
            }
        };
        let id = crate::publish::derived_id(
            [
                self.scope.publisher.service(),
                &self.scope.handler,
                &self.metadata.id,
                name,
            ],
            index,
        );
        // An event without a (readable) trace starts one here, which every follow-up carries.
        let incoming = self
            .metadata
            .traceparent
            .as_ref()
            .filter(|t| crate::observe::trace::trace_id(t).is_some());
        let trace = match incoming {
            Some(traceparent) => traceparent,
            None => self
                .follow_ups
                .trace
                .get_or_init(crate::observe::trace::new_traceparent),
        };
        Ok(PublishOptions::default()
            .id(id)
            .correlation_id(self.metadata.correlation_id.clone())
            .causation_id(self.metadata.id.clone())
            .traceparent(trace.clone()))
    }

    /// The current event's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The current event's id.
    pub fn event_id(&self) -> &str {
        &self.metadata.id
    }

    /// The correlation id follow-up events will carry.
    pub fn correlation_id(&self) -> &str {
        &self.metadata.correlation_id
    }

    /// Which delivery of this event this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The handler's name.
    pub fn handler(&self) -> &str {
        &self.scope.handler
    }

    /// The service running the handler.
    pub fn service(&self) -> &str {
        self.scope.publisher.service()
    }

    /// A state value, if the app was given one of type `T`.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.scope.states.get::<T>()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("handler", &self.scope.handler)
            .field("event", &self.metadata.name)
            .field("id", &self.metadata.id)
            .field("attempt", &self.attempt)
            .finish()
    }
}
