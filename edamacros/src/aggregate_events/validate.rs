//! Meaning of `#[derive(AggregateEvents)]`: an enum, each variant `Name(EventType)`, each event
//! once; every problem recorded at its token.

use quote::ToTokens;
use syn::{Data, DeriveInput, Fields, Ident, Path, Type};

use crate::attr::{self, Args};
use crate::ctxt::Ctxt;

/// What the expansion needs, checked.
pub(crate) struct AggregateEventsSpec {
    pub(crate) ident: Ident,
    pub(crate) krate: Path,
    /// Each variant and the event type it holds.
    pub(crate) variants: Vec<(Ident, Type)>,
}

const SHAPE: &str = "e.g. `enum AccountEvent { Opened(AccountOpened), Deposited(MoneyDeposited) }`";

/// Gives the item its meaning, recording every problem in `cx`; the spec is only used once
/// `cx` checks clean.
pub(crate) fn validate(args: &Args, item: &DeriveInput, cx: &mut Ctxt) -> AggregateEventsSpec {
    let mut krate: Path = syn::parse_quote!(::eda);
    if let Some(literal) = &args.literal {
        cx.error_spanned_by(
            literal,
            "`#[aggregate_events]` takes only `crate = \"path\"`",
        );
    }
    for (key, value) in &args.pairs {
        if let Some(path) = attr::crate_path(key, value, cx) {
            krate = path;
        }
    }
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "aggregate events cannot be generic: each variant holds one concrete event type",
        );
    }
    let mut variants: Vec<(Ident, Type)> = Vec::new();
    match &item.data {
        Data::Struct(s) => cx.error_spanned_by(
            s.struct_token,
            format!("`#[derive(AggregateEvents)]` goes on an enum whose variants each hold one event, not on a struct: {SHAPE}"),
        ),
        Data::Union(u) => cx.error_spanned_by(
            u.union_token,
            format!("`#[derive(AggregateEvents)]` goes on an enum whose variants each hold one event, not on a union: {SHAPE}"),
        ),
        Data::Enum(e) if e.variants.is_empty() => cx.error_spanned_by(
            &item.ident,
            format!("`{}` has no variants: give it one variant per event of the aggregate, {SHAPE}", item.ident),
        ),
        Data::Enum(e) => {
            for variant in &e.variants {
                let name = &variant.ident;
                let ty = match &variant.fields {
                    Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                        fields.unnamed.first().map(|f| f.ty.clone())
                    }
                    Fields::Unit => {
                        cx.error_spanned_by(
                            variant,
                            format!("variant `{name}` holds no event: write it `{name}(EventType)`, one event type per variant"),
                        );
                        None
                    }
                    fields => {
                        cx.error_spanned_by(
                            fields,
                            format!("variant `{name}` must hold exactly one event, as `{name}(EventType)`: make the fields an `#[event]` struct"),
                        );
                        None
                    }
                };
                let Some(ty) = ty else { continue };
                let text = ty.to_token_stream().to_string();
                if let Some((first, _)) = variants
                    .iter()
                    .find(|(_, seen)| seen.to_token_stream().to_string() == text)
                {
                    cx.error_spanned_by(
                        &ty,
                        format!("`{}` is held by variant `{first}` already: each event appears once in an aggregate's events (a load could not tell which variant it was)", text.replace(' ', "")),
                    );
                    continue;
                }
                variants.push((name.clone(), ty));
            }
        }
    }
    AggregateEventsSpec {
        ident: item.ident.clone(),
        krate,
        variants,
    }
}
