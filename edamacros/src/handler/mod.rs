//! `#[handler]`.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::ctxt::Ctxt;

/// `#[handler(...)]` on an `async fn`.
pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<syn::ItemFn>(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[handler]` goes on an `async fn`, e.g. `#[handler] async fn on_user(event: UserCreated)`",
            );
            return with_item(error, item);
        }
    };
    // One context for the whole invocation, checked once below.
    let mut cx = Ctxt::new();
    let spec =
        parse::parse_args(args, &mut cx).map(|args| validate::validate(&args, &function, &mut cx));
    match cx.check_with(spec) {
        Ok(spec) => expand::expand(&spec, &function),
        Err(error) => with_item(error, item),
    }
}

/// The user's function unchanged next to the errors, so the only diagnostics are ours.
fn with_item(error: syn::Error, item: TokenStream) -> TokenStream {
    let mut out = error.to_compile_error();
    out.extend(item);
    out
}
