//! Syntax of `#[event(...)]`: the argument list and the annotated item.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream, Parser};
use syn::DeriveInput;

use crate::attr::{self, Args};
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
    attr::helper_args(&input.item.attrs, "event", KEYS, LITERAL_HINT, cx)
}
