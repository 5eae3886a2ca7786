//! `#[derive(AggregateEvents)]`: an enum whose variants each hold one event.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::ctxt::Ctxt;

/// `#[derive(AggregateEvents)]` with an optional `#[aggregate_events(crate = "...")]`.
pub(crate) fn derive(item: TokenStream) -> TokenStream {
    let input = match syn::parse2::<syn::DeriveInput>(item) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    // One context for the whole invocation, checked once below.
    let mut cx = Ctxt::new();
    let spec = parse::parse_helper_args(&input, &mut cx)
        .map(|args| validate::validate(&args, &input, &mut cx));
    match cx.check_with(spec) {
        Ok(spec) => expand::expand(&spec),
        Err(error) => error.to_compile_error(),
    }
}
