//! Meaning of `#[handler(...)]` and of the function's signature.

use syn::{FnArg, ItemFn, LitStr, Path, ReturnType, Type};

use crate::attr::{self, Args};
use crate::ctxt::Ctxt;
use crate::names;

/// Backoff kinds, as the runtime's `Backoff` variants.
pub(crate) const BACKOFFS: &[&str] = &["fixed", "linear", "exponential"];
/// Idempotency modes, as the runtime's `Idempotency` variants.
pub(crate) const IDEMPOTENCY: &[&str] = &["redelivered", "always", "claim", "off"];
/// Start policies, as the runtime's `Start` variants.
pub(crate) const STARTS: &[&str] = &["new", "all"];

/// What the expansion needs, checked.
pub(crate) struct HandlerSpec {
    pub(crate) name: String,
    pub(crate) subject: Option<LitStr>,
    pub(crate) service: Option<String>,
    pub(crate) concurrency: u32,
    pub(crate) retries: u32,
    pub(crate) backoff: String,
    pub(crate) base_delay: u64,
    pub(crate) max_delay: u64,
    pub(crate) jitter: bool,
    pub(crate) timeout: u64,
    pub(crate) idempotent: String,
    pub(crate) breaker: Option<String>,
    pub(crate) start: String,
    /// The event types it publishes, if declared.
    pub(crate) emits: Option<Vec<Path>>,
    pub(crate) krate: Path,
    pub(crate) event_ty: Type,
    pub(crate) params: Vec<Type>,
    pub(crate) output: Option<Type>,
}

/// Gives the arguments and the signature their meaning, recording every problem in `cx`; the
/// spec is only used once `cx` checks clean.
pub(crate) fn validate(args: &Args, function: &ItemFn, cx: &mut Ctxt) -> HandlerSpec {
    let sig = &function.sig;

    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            "a handler must be an `async fn`: add `async` before `fn`",
        );
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            "a handler cannot be generic: eda calls it with one concrete event type",
        );
    }
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => cx.error_spanned_by(
                receiver,
                "a handler cannot take `self`: write a free `async fn` and reach shared data through `State<T>`",
            ),
            FnArg::Typed(pat) => types.push((*pat.ty).clone()),
        }
    }
    if sig.inputs.is_empty() {
        cx.error_spanned_by(
            &sig.ident,
            "a handler needs the event as its first parameter, e.g. `async fn on_user(event: UserCreated)`",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "a handler cannot be variadic");
    }

    let subject = args.literal.clone();
    if let Some(lit) = &subject {
        if let Err(why) = names::check_subject(&lit.value()) {
            cx.error_spanned_by(lit, why);
        }
    }

    let mut spec = HandlerSpec {
        name: sig.ident.to_string(),
        subject,
        service: None,
        concurrency: 1,
        retries: 3,
        backoff: "exponential".into(),
        base_delay: 100_000_000,
        max_delay: 30_000_000_000,
        jitter: true,
        timeout: 30_000_000_000,
        idempotent: "redelivered".into(),
        breaker: None,
        start: "new".into(),
        emits: None,
        krate: syn::parse_quote!(::eda),
        event_ty: types
            .first()
            .cloned()
            .unwrap_or_else(|| syn::parse_quote!(())),
        params: types.iter().skip(1).cloned().collect(),
        output: match &sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some((**ty).clone()),
        },
    };
    let mut base_lit: Option<LitStr> = None;
    for (key, value) in &args.pairs {
        match key.to_string().as_str() {
            "name" | "service" | "breaker" => {
                let Some(lit) = attr::string(key, value, cx) else {
                    continue;
                };
                let what = match key.to_string().as_str() {
                    "name" => "handler name".to_owned(),
                    other => format!("{other} name"),
                };
                if let Err(why) = names::check_plain_name(&what, &lit.value()) {
                    cx.error_spanned_by(&lit, why);
                }
                match key.to_string().as_str() {
                    "name" => spec.name = lit.value(),
                    "service" => spec.service = Some(lit.value()),
                    _ => spec.breaker = Some(lit.value()),
                }
            }
            "concurrency" => {
                if let Some(n) = attr::integer(key, value, 1, cx) {
                    spec.concurrency = n;
                }
            }
            "retries" => {
                if let Some(n) = attr::integer(key, value, 0, cx) {
                    spec.retries = n;
                }
            }
            "backoff" => {
                if let Some((v, _)) = attr::choice(key, value, BACKOFFS, cx) {
                    spec.backoff = v;
                }
            }
            "idempotent" => {
                if let Some((v, _)) = attr::choice(key, value, IDEMPOTENCY, cx) {
                    spec.idempotent = v;
                }
            }
            "emits" => {
                if let Some(paths) = attr::paths(key, value, cx) {
                    spec.emits = Some(paths);
                }
            }
            "start" => {
                if let Some((v, _)) = attr::choice(key, value, STARTS, cx) {
                    spec.start = v;
                }
            }
            "base_delay" => {
                if let Some((n, lit)) = attr::duration(key, value, cx) {
                    spec.base_delay = n;
                    base_lit = Some(lit);
                }
            }
            "max_delay" => {
                if let Some((n, _)) = attr::duration(key, value, cx) {
                    spec.max_delay = n;
                }
            }
            "timeout" => {
                if let Some((n, lit)) = attr::duration(key, value, cx) {
                    if n == 0 {
                        cx.error_spanned_by(&lit, "`timeout` must be longer than zero");
                    }
                    spec.timeout = n;
                }
            }
            "jitter" => {
                if let Some(b) = attr::boolean(key, value, cx) {
                    spec.jitter = b;
                }
            }
            _ => {
                if let Some(p) = attr::crate_path(key, value, cx) {
                    spec.krate = p;
                }
            }
        }
    }
    if spec.base_delay > spec.max_delay {
        let message = "`base_delay` is longer than `max_delay`; the delay between retries grows from `base_delay` up to `max_delay`";
        match &base_lit {
            Some(lit) => cx.error_spanned_by(lit, message),
            None => cx.error_spanned_by(&sig.ident, message),
        }
    }
    spec
}
