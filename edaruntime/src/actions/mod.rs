//! Actions without code: handlers declared in a TOML file that call HTTP services when
//! events arrive, with eda's delivery semantics (retries with backoff, dead letters,
//! breakers, idempotency, metrics) — the same runtime as `#[handler]` functions.
//!
//! ```toml
//! [[trigger]]
//! name = "sync_user"                 # the durable consumer <service>__sync_user
//! event = "user.created"             # a subject pattern; wildcards allowed
//! retries = 5
//! breaker = "user-backend"
//! [[trigger.action]]
//! type = "web_service"
//! url = "http://127.0.0.1:9001/api/users/${event.id}"
//! method = "POST"
//! timeout = "5s"
//! headers = { Authorization = "Bearer ${env.USER_API_TOKEN}", X-Correlation-Id = "${meta.correlation_id}" }
//! body = { userId = "${event.id}", email = "${event.email}", source = "${meta.source}" }
//! emit = "user.synced"               # publish the response's JSON body as this event
//! ```
//!
//! Load it into any service with [`AppBuilder::actions`](crate::AppBuilder::actions), or run
//! it alone with `eda actions run actions.toml --service integrations`. Templates are
//! described in [`template`](self) terms: `${event.<path>}`, `${meta.<field>}`,
//! `${env.<VAR>}` (read when the file is loaded; never written to logs, metrics or dead
//! letters: messages show the URL as written, with its `${..}`).
//!
//! What a call's outcome means: a 2xx answer is success; connection errors, timeouts, 5xx,
//! 408 and 429 are retried with the trigger's backoff (a `Retry-After`, in seconds or as an
//! HTTP date, is waited at least); any other status is permanent: the event is dead-lettered at once with the
//! status and the first KiB of the answer. Every call carries `Idempotency-Key:
//! <event id>.<trigger>` (`.<n>` added for the n-th action after the first), the same on
//! every retry, so the receiving service can drop repeats. Actions of one trigger run in
//! order; a failed one fails the attempt, and a retry runs them all again.

mod config;
mod graph;
mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

pub use graph::Workflow;
use template::{Escape, Scope, Template};

use crate::handler::{
    Context, Failure, HandlerDescriptor, HandlerError, HandlerOptions, Invocation, InvokeResult,
};

/// How much of an error answer a dead letter keeps.
const ANSWER_KEPT: usize = 1024;

/// A loaded actions file: its triggers, checked.
#[derive(Debug, Clone)]
pub struct Actions {
    triggers: Vec<Trigger>,
}

/// One trigger: an event pattern and the actions run for each of its events.
#[derive(Debug, Clone)]
pub struct Trigger {
    name: String,
    event: String,
    retries: Option<u32>,
    breaker: Option<String>,
    concurrency: Option<u32>,
    actions: Vec<Action>,
}

#[derive(Debug, Clone)]
struct Action {
    method: reqwest::Method,
    /// The URL as written (with its `${..}`), for messages: never a secret's value.
    url_text: String,
    url: Template,
    timeout: Duration,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    body: Option<Body>,
    emit: Option<String>,
}

/// A body template: JSON whose strings are templates.
#[derive(Debug, Clone)]
enum Body {
    Text(Template),
    List(Vec<Body>),
    Object(Vec<(String, Body)>),
    Literal(Value),
}

/// What is wrong with an actions file: one problem per line, each with file, line and
/// column.
#[derive(Debug, Clone)]
pub struct ActionsError {
    problems: Vec<String>,
}

impl ActionsError {
    /// Every problem found.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl std::fmt::Display for ActionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ActionsError {}

impl Actions {
    /// Reads and checks the file at `path` (environment variables of `${env.*}` from the
    /// process).
    pub fn load(path: impl AsRef<Path>) -> Result<Actions, ActionsError> {
        Actions::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Reads and checks the file at `path`, looking the `${env.*}` variables up with `env`
    /// (e.g. a stand-in value for each, to draw a file's workflow without its secrets).
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Actions, ActionsError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ActionsError {
            problems: vec![format!("cannot read actions file `{origin}`: {e}")],
        })?;
        Actions::parse(&text, &origin, env)
    }

    /// Checks the text of an actions file; `origin` names it in messages, `env` looks up the
    /// `${env.*}` variables.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Actions, ActionsError> {
        let triggers =
            config::parse(text, origin, env).map_err(|problems| ActionsError { problems })?;
        let actions = Actions { triggers };
        let cycles = actions.workflow().cycles();
        if !cycles.is_empty() {
            let problems = cycles
                .iter()
                .map(|cycle| {
                    format!(
                        "{origin}: the triggers {} form a cycle: each event they emit starts the next, for ever",
                        cycle.join(" -> ")
                    )
                })
                .collect();
            return Err(ActionsError { problems });
        }
        Ok(actions)
    }

    /// Adds the triggers of another file (a name both use is an error).
    pub fn merge(&mut self, other: Actions) -> Result<(), ActionsError> {
        let problems: Vec<String> = other
            .triggers
            .iter()
            .filter(|t| self.triggers.iter().any(|mine| mine.name == t.name))
            .map(|t| format!("two actions files name a trigger `{}`", t.name))
            .collect();
        if !problems.is_empty() {
            return Err(ActionsError { problems });
        }
        self.triggers.extend(other.triggers);
        Ok(())
    }

    /// The triggers' names, in file order.
    pub fn trigger_names(&self) -> Vec<&str> {
        self.triggers.iter().map(|t| t.name.as_str()).collect()
    }

    /// The triggers chained through the events they emit.
    pub fn workflow(&self) -> Workflow {
        Workflow::of(&self.triggers)
    }

    /// The handler descriptors of the triggers, for an app (leaked: an app keeps its handlers
    /// for the life of the process).
    pub(crate) fn descriptors(&self) -> Vec<&'static HandlerDescriptor> {
        self.triggers.iter().map(descriptor).collect()
    }

    /// What the triggers need at run time: themselves by name and one HTTP client (one
    /// connection pool) for all.
    pub(crate) fn runner(&self, paths: &[PathBuf]) -> Result<Runner, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS for actions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .user_agent(concat!("eda-actions/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client for actions: {e}"))?;
        Ok(Runner {
            triggers: RwLock::new(
                self.triggers
                    .iter()
                    .map(|t| (t.name.clone(), Arc::new(t.clone())))
                    .collect(),
            ),
            client,
            paths: paths.to_vec(),
        })
    }
}

/// The handler descriptor of trigger `t` (leaked: an app keeps its handlers for the life of
/// the process; a reload leaks the few it starts).
fn descriptor(t: &Trigger) -> &'static HandlerDescriptor {
    let defaults = HandlerOptions::default();
    let calls: Duration = t.actions.iter().map(|a| a.timeout).sum();
    let emits: Vec<&'static str> = t
        .actions
        .iter()
        .filter_map(|a| a.emit.as_deref())
        .map(leak)
        .collect();
    Box::leak(Box::new(HandlerDescriptor {
        name: leak(&t.name),
        subject: leak(&t.event),
        service: None,
        event: None,
        options: HandlerOptions {
            retries: t.retries.unwrap_or(defaults.retries),
            concurrency: t.concurrency.unwrap_or(defaults.concurrency),
            breaker: t.breaker.as_deref().map(leak),
            // Every call may take its whole timeout, and a little more.
            timeout: (calls + Duration::from_secs(5)).max(defaults.timeout),
            ..defaults
        },
        emits: Some(Box::leak(emits.into_boxed_slice())),
        requirements: &[],
        invoke,
        module_path: "actions",
    }))
}

/// How long a `Retry-After` value asks to wait from `now`: seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`); `None` for anything else, or a date already past.
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

/// The triggers of an app, by name, with the HTTP client they share (an app state), and the
/// files they came from (read again by [`Runner::reload`]).
#[derive(Debug)]
pub(crate) struct Runner {
    triggers: RwLock<HashMap<String, Arc<Trigger>>>,
    client: reqwest::Client,
    paths: Vec<PathBuf>,
}

impl Runner {
    fn trigger(&self, name: &str) -> Option<Arc<Trigger>> {
        self.triggers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Whether `name` is one of the loaded triggers.
    pub(crate) fn has_trigger(&self, name: &str) -> bool {
        self.trigger(name).is_some()
    }

    /// Reads the files again and says what to change. A file with errors changes nothing (the
    /// errors are returned and logged). A trigger whose actions changed (URL, method, headers,
    /// body, timeout) runs the new ones from its next event; a new trigger is to be started; a
    /// removed one, to be stopped after draining (then [`Runner::forget`] it); one with other
    /// retries, concurrency, breaker or `emit`, both. A trigger with another event keeps
    /// running as it was: its durable consumer reads the old subject (rename the trigger).
    /// `handlers` are the app's other handlers (a trigger may not take a name of theirs),
    /// `breakers` the breakers the app has.
    pub(crate) fn reload(
        &self,
        handlers: &[&str],
        breakers: &[&str],
    ) -> Result<ReloadPlan, ActionsError> {
        let mut loaded: Option<Actions> = None;
        for path in &self.paths {
            let actions = Actions::load(path)?;
            match &mut loaded {
                None => loaded = Some(actions),
                Some(all) => all.merge(actions)?,
            }
        }
        let Some(loaded) = loaded else {
            return Ok(ReloadPlan::default());
        };
        let problems: Vec<String> = loaded
            .triggers
            .iter()
            .filter(|t| handlers.contains(&t.name.as_str()))
            .map(|t| format!("trigger `{}` has the name of a handler of this service: rename one (a name names the durable consumer)", t.name))
            .collect();
        if !problems.is_empty() {
            return Err(ActionsError { problems });
        }
        let mut plan = ReloadPlan::default();
        let mut triggers = self
            .triggers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let kept: Vec<String> = loaded.triggers.iter().map(|t| t.name.clone()).collect();
        for new in loaded.triggers {
            let name = new.name.clone();
            if let Some(breaker) = new.breaker.as_deref().filter(|b| !breakers.contains(b)) {
                plan.report.need_restart.push(format!(
                    "`{name}` names breaker `{breaker}`, which this app did not start with"
                ));
                continue;
            }
            match triggers.get(&name) {
                None => {
                    plan.start.push(descriptor(&new));
                    plan.report.started.push(name.clone());
                }
                Some(old) if old.event != new.event => {
                    plan.report.need_restart.push(format!(
                        "`{name}` changed its event (`{}` to `{}`): its durable consumer reads the old subject; give the trigger a new name",
                        old.event, new.event
                    ));
                    continue;
                }
                Some(old) if !old.same_consumer(&new) => {
                    plan.stop.push(name.clone());
                    plan.start.push(descriptor(&new));
                    plan.report.restarted.push(name.clone());
                }
                Some(_) => plan.report.updated.push(name.clone()),
            }
            triggers.insert(name, Arc::new(new));
        }
        for name in triggers.keys() {
            if !kept.contains(name) {
                plan.stop.push(name.clone());
                plan.report.stopped.push(name.clone());
            }
        }
        Ok(plan)
    }

    /// Forgets trigger `name` once its consumer stopped (a reload removed it).
    pub(crate) fn forget(&self, name: &str) {
        self.triggers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}

/// What a reload changes in a running app: the report, the triggers to start and those to
/// stop (a trigger in both is stopped first).
#[derive(Debug, Default)]
pub(crate) struct ReloadPlan {
    pub(crate) report: Reloaded,
    pub(crate) start: Vec<&'static HandlerDescriptor>,
    pub(crate) stop: Vec<String>,
}

/// What [`Runner::reload`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Triggers that run their new actions from their next event.
    pub updated: Vec<String>,
    /// New triggers, started.
    pub started: Vec<String>,
    /// Triggers with other retries, concurrency, breaker or `emit`: stopped after draining,
    /// and started again with them.
    pub restarted: Vec<String>,
    /// Triggers no longer in the files, stopped after draining.
    pub stopped: Vec<String>,
    /// Changes not applied, one line each, with why and what to do.
    pub need_restart: Vec<String>,
}

/// Logs what a reload did.
pub(crate) fn log_reload(result: &Result<Reloaded, ActionsError>) {
    match result {
        Ok(report) => {
            tracing::info!(updated = ?report.updated, started = ?report.started, restarted = ?report.restarted, stopped = ?report.stopped, "reloaded the actions files");
            for line in &report.need_restart {
                tracing::warn!("actions reload: trigger {line}: not applied");
            }
        }
        Err(e) => {
            tracing::error!(problems = %e, "the actions files have errors; the triggers loaded before go on")
        }
    }
}

/// The invoke function of every trigger's descriptor: finds the trigger by the handler's
/// name in the app's [`Runner`] and runs its actions.
fn invoke(invocation: Invocation) -> BoxFuture<'static, InvokeResult> {
    Box::pin(async move {
        let Invocation { raw, context } = invocation;
        let runner = context.state::<Runner>().ok_or_else(|| {
            Failure::Handler(HandlerError::retry("the app has no actions loaded"))
        })?;
        let trigger = runner.trigger(context.handler()).ok_or_else(|| {
            Failure::Handler(HandlerError::retry(format!(
                "no trigger named `{}` is loaded",
                context.handler()
            )))
        })?;
        let event: Value = serde_json::from_slice(raw.payload()).map_err(|e| {
            Failure::Handler(HandlerError::permanent(format!(
                "trigger `{}`: the payload of `{}` is not JSON ({e}); actions read JSON events",
                trigger.name,
                raw.metadata().name
            )))
        })?;
        let scope = Scope {
            event: &event,
            meta: raw.metadata(),
            attempt: context.attempt(),
        };
        for (index, action) in trigger.actions.iter().enumerate() {
            action
                .call(&runner.client, &trigger.name, index, &scope, &context)
                .await
                .map_err(Failure::Handler)?;
        }
        Ok(())
    })
}

impl Trigger {
    /// Whether `other` can run on this trigger's consumer and runtime (what a reload can
    /// change in place).
    fn same_consumer(&self, other: &Trigger) -> bool {
        self.event == other.event
            && self.retries == other.retries
            && self.concurrency == other.concurrency
            && self.breaker == other.breaker
            && self
                .actions
                .iter()
                .map(|a| &a.emit)
                .eq(other.actions.iter().map(|a| &a.emit))
    }
}

impl Action {
    /// `METHOD <url as written>`, for messages.
    fn label(&self) -> String {
        format!("{} {}", self.method, self.url_text)
    }

    async fn call(
        &self,
        client: &reqwest::Client,
        trigger: &str,
        index: usize,
        scope: &Scope<'_>,
        context: &Context,
    ) -> Result<(), HandlerError> {
        let label = self.label();
        let bad =
            |why: String| HandlerError::permanent(format!("trigger `{trigger}`, {label}: {why}"));
        let url = self.url.render(scope, Escape::Url).map_err(bad)?;
        let url = reqwest::Url::parse(&url)
            .map_err(|e| bad(format!("the URL does not render to a URL ({e})")))?;
        let mut key = format!("{}.{trigger}", scope.meta.id);
        if index > 0 {
            key.push_str(&format!(".{index}"));
        }
        let mut request = client
            .request(self.method.clone(), url)
            .timeout(self.timeout)
            .header("Idempotency-Key", key);
        for (name, value) in &self.headers {
            let text = value.render(scope, Escape::None).map_err(bad)?;
            let value = reqwest::header::HeaderValue::from_str(&text).map_err(|_| {
                bad(format!("header `{name}` renders to a value a header cannot carry (a line break or control character)"))
            })?;
            request = request.header(name.clone(), value);
        }
        if let Some(body) = &self.body {
            let json = body.render(scope).map_err(bad)?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json.to_string());
        }
        let answer = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                )
            } else if e.is_connect() {
                format!("cannot connect ({})", e.without_url())
            } else {
                e.without_url().to_string()
            };
            HandlerError::retry(format!("trigger `{trigger}`, {label}: {why}"))
        })?;
        let status = answer.status();
        let retry_after = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        let body = answer.bytes().await.map_err(|e| {
            HandlerError::retry(format!(
                "trigger `{trigger}`, {label}: the answer broke off ({})",
                e.without_url()
            ))
        })?;
        if status.is_success() {
            if let Some(emit) = &self.emit {
                let payload = if body.is_empty() { "{}".into() } else { body };
                if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
                    return Err(bad(format!(
                        "answered {status} with a body that is not JSON, and `emit = \"{emit}\"` publishes it: {}",
                        crate::wire::truncated(&String::from_utf8_lossy(&payload), ANSWER_KEPT)
                    )));
                }
                context.publish_raw(emit, 1, payload).await.map_err(|e| {
                    HandlerError::retry(format!(
                        "trigger `{trigger}`: cannot publish `{emit}`: {e}"
                    ))
                })?;
            }
            return Ok(());
        }
        // An error page may echo the request (its `Authorization` header, say): the values
        // of `${env.*}` are taken out of what is kept.
        let answer = self.without_secrets(String::from_utf8_lossy(&body).into_owned());
        let why = format!(
            "trigger `{trigger}`, {label} answered {status}: {}",
            crate::wire::truncated(&answer, ANSWER_KEPT)
        );
        let code = status.as_u16();
        Err(if status.is_server_error() || code == 408 || code == 429 {
            match retry_after {
                Some(delay) => HandlerError::retry_after(why, delay),
                None => HandlerError::retry(why),
            }
        } else {
            HandlerError::permanent(why)
        })
    }
}

impl Action {
    /// `text` with every `${env.*}` value of this action (4 bytes or longer) replaced by `***`.
    fn without_secrets(&self, mut text: String) -> String {
        let mut secrets: Vec<&str> = self.url.secrets().collect();
        for (_, value) in &self.headers {
            secrets.extend(value.secrets());
        }
        if let Some(body) = &self.body {
            body.secrets(&mut secrets);
        }
        for secret in secrets {
            if secret.len() >= 4 && text.contains(secret) {
                text = text.replace(secret, "***");
            }
        }
        text
    }
}

impl Body {
    fn secrets<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Body::Text(t) => out.extend(t.secrets()),
            Body::List(items) => items.iter().for_each(|i| i.secrets(out)),
            Body::Object(fields) => fields.iter().for_each(|(_, v)| v.secrets(out)),
            Body::Literal(_) => {}
        }
    }

    fn render(&self, scope: &Scope<'_>) -> Result<Value, String> {
        Ok(match self {
            Body::Text(t) => t.render_value(scope)?,
            Body::List(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
            Body::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render(scope)?)))
                    .collect::<Result<_, String>>()?,
            ),
            Body::Literal(v) => v.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        // Wed, 21 Oct 2026 07:28:00 GMT
        let now = UNIX_EPOCH + Duration::from_secs(1_792_567_680);
        assert_eq!(
            super::retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            super::retry_after("Wed, 21 Oct 2026 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            super::retry_after("Wed, 21 Oct 2026 07:27:00 GMT", now),
            None,
            "past"
        );
        assert_eq!(super::retry_after("soon", now), None);
        assert_eq!(super::retry_after("-5", SystemTime::now()), None);
    }
}
