//! Syntax of `#[event(...)]`: the argument list and the annotated item.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream, Parser};
use syn::{Attribute, DeriveInput};

use crate::attr::Args;
use crate::ctxt::Ctxt;

/// Keys `#[event]` accepts.
pub(crate) const KEYS: &[&str] = &["version", "upcast_from", "crate"];

const LITERAL_HINT: &str = "#[event(\"user.created\", version = 2)]";

/// Whether the attribute macro or the derive runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `#[event]`: adds the serde and schemars derives itself.
    Attribute,
    /// `#[derive(Event)]`: the user writes their own derives.
    Derive,
}

/// The annotated item.
pub(crate) struct EventInput {
    pub(crate) item: DeriveInput,
}

impl Parse for EventInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Ok(EventInput {
            item: input.parse()?,
        })
    }
}

/// Parses `#[event(...)]`'s arguments, recording option errors in `cx`; a syntax error stops
/// the parse.
pub(crate) fn parse_attribute_args(tokens: TokenStream, cx: &mut Ctxt) -> syn::Result<Args> {
    (|input: ParseStream<'_>| Args::parse_checked(input, KEYS, LITERAL_HINT, cx)).parse2(tokens)
}

/// Reads the `#[event(...)]` helper attributes of a `#[derive(Event)]` item.
pub(crate) fn parse_helper_args(input: &EventInput, cx: &mut Ctxt) -> syn::Result<Args> {
    let mut found: Option<Args> = None;
    for attr in input
        .item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("event"))
    {
        if found.is_some() {
            cx.error_spanned_by(
                attr,
                "`#[event(...)]` is given twice; merge the options into one",
            );
            continue;
        }
        found = Some(helper_args(attr, cx)?);
    }
    Ok(found.unwrap_or_else(Args::empty))
}

fn helper_args(attr: &Attribute, cx: &mut Ctxt) -> syn::Result<Args> {
    match &attr.meta {
        syn::Meta::Path(_) => Ok(Args::empty()),
        _ => attr.parse_args_with(|input: ParseStream<'_>| {
            Args::parse_checked(input, KEYS, LITERAL_HINT, cx)
        }),
    }
}
