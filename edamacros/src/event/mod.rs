//! `#[event]` and `#[derive(Event)]`.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::ctxt::Ctxt;

/// `#[event(...)]` on a struct or enum.
pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let input = match syn::parse2::<parse::EventInput>(item.clone()) {
        Ok(input) => input,
        Err(error) => return with_item(error, item),
    };
    // One context for the whole invocation, checked once below.
    let mut cx = Ctxt::new();
    let spec = parse::parse_attribute_args(args, &mut cx)
        .map(|args| validate::validate(&args, &input, parse::Mode::Attribute, &mut cx));
    match cx.check_with(spec) {
        Ok(spec) => expand::expand(&spec, input),
        Err(error) => with_item(error, item),
    }
}

/// `#[derive(Event)]` with an optional `#[event(...)]` helper attribute.
pub(crate) fn derive(item: TokenStream) -> TokenStream {
    let input = match syn::parse2::<parse::EventInput>(item) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    // One context for the whole invocation, checked once below.
    let mut cx = Ctxt::new();
    let spec = parse::parse_helper_args(&input, &mut cx)
        .map(|args| validate::validate(&args, &input, parse::Mode::Derive, &mut cx));
    match cx.check_with(spec) {
        Ok(spec) => expand::expand_impls(&spec),
        Err(error) => error.to_compile_error(),
    }
}

/// The user's item unchanged next to the errors, so the only diagnostics are ours.
fn with_item(error: syn::Error, item: TokenStream) -> TokenStream {
    let mut out = error.to_compile_error();
    out.extend(item);
    out
}
