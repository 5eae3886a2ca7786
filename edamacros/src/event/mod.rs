//! `#[event]` and `#[derive(Event)]`.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

/// `#[event(...)]` on a struct or enum.
pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let input = match syn::parse2::<parse::EventInput>(item.clone()) {
        Ok(input) => input,
        Err(error) => return with_item(error, item),
    };
    match parse::parse_attribute_args(args)
        .and_then(|args| validate::validate(args, &input, parse::Mode::Attribute))
    {
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
    match parse::parse_helper_args(&input)
        .and_then(|args| validate::validate(args, &input, parse::Mode::Derive))
    {
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
