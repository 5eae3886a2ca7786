//! An error sink that collects every problem so users fix them all in one compile, and that
//! cannot be forgotten (serde_derive's `internals/ctxt.rs`): each macro invocation makes one
//! [`Ctxt`], passes it down to parsing and validation, and checks it once at the end.

use std::fmt::Display;

use quote::ToTokens;

/// Collects spanned errors; [`Ctxt::check`] or [`Ctxt::check_with`] combines them into one
/// `syn::Error`. Dropping a `Ctxt` that was never checked panics in debug builds: its errors
/// would be lost.
pub(crate) struct Ctxt {
    errors: Vec<syn::Error>,
    /// Set by `check`; the drop guard reads it.
    checked: bool,
}

impl Ctxt {
    /// An empty context; it must be checked before it is dropped.
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: Vec::new(),
            checked: false,
        }
    }

    /// Records an error pointing at `tokens`.
    pub(crate) fn error_spanned_by(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.errors
            .push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Ok if nothing was recorded, else every error combined.
    pub(crate) fn check(mut self) -> syn::Result<()> {
        self.checked = true;
        let mut errors = std::mem::take(&mut self.errors).into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }

    /// Checks the context and joins its errors with those of `result`, the outcome of the
    /// work that recorded them (a syntax error stops that work, but the problems recorded
    /// before it are still reported): `result`'s value only when both hold no error.
    pub(crate) fn check_with<T>(self, result: syn::Result<T>) -> syn::Result<T> {
        match (self.check(), result) {
            (Ok(()), result) => result,
            (Err(errors), Ok(_)) => Err(errors),
            (Err(mut errors), Err(error)) => {
                errors.combine(error);
                Err(errors)
            }
        }
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        // A forgotten check is a bug in this crate, never in the user's input, and it loses
        // the user's diagnostics. Debug builds only, unlike serde (which panics always): our
        // unit and UI tests run in debug builds and catch it there, while a proc macro
        // compiled into a user's release build follows STYLE.md's "never panic in a macro";
        // there the same bug costs diagnostics, not a panic instead of the real error (a
        // syntax error returned with `?` past an empty, unchecked context). Not while
        // unwinding: a panic in a panic aborts, and the first one says more.
        if !self.checked && !std::thread::panicking() && cfg!(debug_assertions) {
            panic!(
                "edamacros: a `Ctxt` was dropped without `check()`, losing {} error(s); \
                 this is a bug in edamacros",
                self.errors.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;

    use super::Ctxt;

    fn ident(name: &str) -> syn::Ident {
        syn::Ident::new(name, Span::call_site())
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "a `Ctxt` was dropped without `check()`, losing 1 error(s)")
    )]
    fn dropping_an_unchecked_ctxt_panics_in_debug_builds() {
        let mut cx = Ctxt::new();
        cx.error_spanned_by(ident("version"), "`version` must be at least 1");
        drop(cx);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "a `Ctxt` was dropped without `check()`, losing 0 error(s)")
    )]
    fn dropping_an_unchecked_empty_ctxt_panics_in_debug_builds() {
        drop(Ctxt::new());
    }

    #[test]
    fn a_checked_ctxt_drops_quietly() {
        assert!(
            Ctxt::new().check().is_ok(),
            "a context without errors checks as Ok"
        );
        let mut cx = Ctxt::new();
        cx.error_spanned_by(ident("a"), "first");
        cx.error_spanned_by(ident("b"), "second");
        let messages: Vec<String> = match cx.check() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            messages,
            ["first", "second"],
            "check returns every recorded error, in order"
        );
    }

    #[test]
    fn check_with_joins_recorded_errors_and_the_result() {
        assert_eq!(
            Ctxt::new().check_with(Ok(7)).ok(),
            Some(7),
            "no errors anywhere: the value"
        );
        let syntax = || syn::Error::new(Span::call_site(), "syntax");
        let only_result: Vec<String> = match Ctxt::new().check_with::<()>(Err(syntax())) {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            only_result,
            ["syntax"],
            "an empty context keeps the result's error"
        );

        let mut cx = Ctxt::new();
        cx.error_spanned_by(ident("a"), "recorded");
        assert!(
            cx.check_with(Ok(7)).is_err(),
            "a recorded error wins over an Ok result"
        );

        let mut cx = Ctxt::new();
        cx.error_spanned_by(ident("a"), "recorded");
        let both: Vec<String> = match cx.check_with::<()>(Err(syntax())) {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            both,
            ["recorded", "syntax"],
            "both kinds reported, the recorded ones first"
        );
    }
}
