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
    "emits",
    "crate",
];

/// Parses `#[handler(...)]`'s arguments, recording option errors in `cx`; a syntax error
/// stops the parse.
pub(crate) fn parse_args(tokens: TokenStream, cx: &mut Ctxt) -> syn::Result<Args> {
    (|input: ParseStream<'_>| {
        Args::parse_checked(input, KEYS, "#[handler(\"user.created\", retries = 5)]", cx)
    })
    .parse2(tokens)
}
