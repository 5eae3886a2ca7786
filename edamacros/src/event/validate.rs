//! Meaning of `#[event(...)]`: every problem recorded at its token.

use syn::punctuated::Punctuated;
use syn::{Data, Path, Token};

use super::parse::{EventInput, Mode};
use crate::attr::{self, Args};
use crate::ctxt::Ctxt;
use crate::names;

/// What the expansion needs, checked.
pub(crate) struct EventSpec {
    pub(crate) ident: syn::Ident,
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) upcast_from: Option<Path>,
    pub(crate) krate: Path,
    /// `#[event]` written before `#[derive(Event)]`: act as the derive, and drop `Event` from
    /// that derive list so it does not run a second time.
    pub(crate) mode: Mode,
    pub(crate) strip_derive_event: bool,
}

const SERDE_DERIVES: &[&str] = &["Serialize", "Deserialize", "JsonSchema"];

/// Gives the arguments their meaning, recording every problem in `cx`; the spec is only
/// used once `cx` checks clean.
pub(crate) fn validate(args: &Args, input: &EventInput, mode: Mode, cx: &mut Ctxt) -> EventSpec {
    let item = &input.item;

    match &item.data {
        Data::Union(u) => cx.error_spanned_by(
            u.union_token,
            "`#[event]` supports structs and enums, not unions: an event must be serializable",
        ),
        Data::Struct(_) | Data::Enum(_) => {}
    }
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "an event cannot be generic: each event type has exactly one schema; use a concrete type",
        );
    }

    let name = match &args.literal {
        Some(lit) => {
            let name = lit.value();
            if let Err(why) = names::check_event_name(&name) {
                cx.error_spanned_by(lit, why);
            }
            name
        }
        None => {
            let name = names::dotted_name(&item.ident.to_string());
            if let Err(why) = names::check_event_name(&name) {
                cx.error_spanned_by(
                    &item.ident,
                    format!("cannot derive an event name from `{}`: {why}; give one, e.g. #[event(\"order.placed\")]", item.ident),
                );
            }
            name
        }
    };

    let mut version = 1;
    let mut upcast_from = None;
    let mut krate: Path = syn::parse_quote!(::eda);
    for (key, value) in &args.pairs {
        match key.to_string().as_str() {
            "version" => {
                if let Some(v) = attr::integer(key, value, 1, cx) {
                    version = v;
                }
            }
            "upcast_from" => upcast_from = attr::path(key, value, cx),
            _ => {
                if let Some(p) = attr::crate_path(key, value, cx) {
                    krate = p;
                }
            }
        }
    }
    if let (Some(from), 1) = (&upcast_from, version) {
        cx.error_spanned_by(
            from,
            "`upcast_from` needs `version` of 2 or more: it names the event one version lower",
        );
    }

    let derived = derived_paths(item);
    let before_derive = mode == Mode::Attribute && derived.iter().any(|(_, last)| last == "Event");
    if mode == Mode::Attribute && !before_derive {
        for (path, last) in derived
            .iter()
            .filter(|(_, l)| SERDE_DERIVES.contains(&l.as_str()))
        {
            cx.error_spanned_by(
                path,
                format!("`#[event]` already derives `{last}`; remove it here, or use `#[derive(Event)]` with your own derives"),
            );
        }
    }
    EventSpec {
        ident: item.ident.clone(),
        name,
        version,
        upcast_from,
        krate,
        mode: if before_derive { Mode::Derive } else { mode },
        strip_derive_event: before_derive,
    }
}

/// Every path in the item's `#[derive(...)]` lists, with its last segment.
fn derived_paths(item: &syn::DeriveInput) -> Vec<(Path, String)> {
    let mut out = Vec::new();
    for attr in item.attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let Ok(paths) = attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
        else {
            continue;
        };
        for path in paths {
            if let Some(last) = path.segments.last().map(|s| s.ident.to_string()) {
                out.push((path, last));
            }
        }
    }
    out
}
