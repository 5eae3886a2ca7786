//! Syntax of `#[handler(...)]`.

use proc_macro2::TokenStream;
use syn::parse::{ParseStream, Parser};

use crate::attr::Args;
use crate::ctxt::Ctxt;

/// Keys `#[handler]` accepts.
pub(crate) const KEYS: &[&str] = &[
    "name",
    "service",
    "concurrency",
    "retries",
    "backoff",
    "base_delay",
    "max_delay",
    "jitter",
    "timeout",
    "idempotent",
    "breaker",
    "start",
    "crate",
];

/// Arguments with the errors recorded while splitting them.
pub(crate) struct ParsedArgs {
    pub(crate) args: Args,
    pub(crate) cx: Ctxt,
}

pub(crate) fn parse_args(tokens: TokenStream) -> syn::Result<ParsedArgs> {
    let mut cx = Ctxt::default();
    let args = (|input: ParseStream<'_>| {
        Args::parse_checked(
            input,
            KEYS,
            "#[handler(\"user.created\", retries = 5)]",
            &mut cx,
        )
    })
    .parse2(tokens)?;
    Ok(ParsedArgs { args, cx })
}
