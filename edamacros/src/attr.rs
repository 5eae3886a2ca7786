//! The argument list both attributes share: an optional string literal, then `key = value`
//! pairs. Parsing is purely syntactic; each macro's `validate` gives the values meaning.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Ident, Lit, LitBool, LitStr, Path, Token};

use crate::ctxt::Ctxt;
use crate::names;

/// One argument: `"literal"` or `key = value`.
pub(crate) enum Arg {
    Literal(LitStr),
    Pair { key: Ident, value: Expr },
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            return Ok(Arg::Literal(input.parse()?));
        }
        if !(input.peek(Ident::peek_any)) {
            return Err(input.error(
                "expected a string literal or `key = value`, e.g. `\"user.created\", version = 2`",
            ));
        }
        let key = Ident::parse_any(input)?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `{key} = ...`: options take a value"),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Arg::Pair { key, value })
    }
}

/// The whole argument list of `#[event(...)]` or `#[handler(...)]`.
pub(crate) struct Args {
    pub(crate) literal: Option<LitStr>,
    pub(crate) pairs: Vec<(Ident, Expr)>,
}

impl Args {
    pub(crate) fn empty() -> Self {
        Args {
            literal: None,
            pairs: Vec::new(),
        }
    }

    /// Splits the list into the positional literal and the pairs, recording a misplaced or
    /// second literal, unknown keys (with the closest valid one) and repeated keys.
    pub(crate) fn parse_checked(
        input: ParseStream<'_>,
        known: &[&str],
        literal_hint: &str,
        cx: &mut Ctxt,
    ) -> syn::Result<Self> {
        let list = Punctuated::<Arg, Token![,]>::parse_terminated(input)?;
        let mut args = Args::empty();
        let mut seen: Vec<String> = Vec::new();
        for (index, arg) in list.into_iter().enumerate() {
            match arg {
                Arg::Literal(lit) if index == 0 => args.literal = Some(lit),
                Arg::Literal(lit) => cx.error_spanned_by(
                    &lit,
                    format!("the string literal must come first: {literal_hint}"),
                ),
                Arg::Pair { key, value } => {
                    let name = key.unraw().to_string();
                    if !known.contains(&name.as_str()) {
                        let mut message = format!(
                            "unknown option `{name}`; expected one of: {}",
                            known.join(", ")
                        );
                        if let Some(close) = names::nearest(&name, known) {
                            message = format!("unknown option `{name}`; did you mean `{close}`? expected one of: {}", known.join(", "));
                        }
                        cx.error_spanned_by(&key, message);
                    } else if seen.contains(&name) {
                        cx.error_spanned_by(&key, format!("option `{name}` is given twice"));
                    } else {
                        seen.push(name);
                        args.pairs.push((key, value));
                    }
                }
            }
        }
        Ok(args)
    }
}

/// Reads a derive's `#[<name>(...)]` helper attribute (given once at most; a bare
/// `#[<name>]` has no options).
pub(crate) fn helper_args(
    attrs: &[Attribute],
    name: &str,
    known: &[&str],
    literal_hint: &str,
    cx: &mut Ctxt,
) -> syn::Result<Args> {
    let mut found: Option<Args> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident(name)) {
        if found.is_some() {
            cx.error_spanned_by(
                attr,
                format!("`#[{name}(...)]` is given twice; merge the options into one"),
            );
            continue;
        }
        found = Some(match &attr.meta {
            syn::Meta::Path(_) => Args::empty(),
            _ => attr.parse_args_with(|input: ParseStream<'_>| {
                Args::parse_checked(input, known, literal_hint, cx)
            })?,
        });
    }
    Ok(found.unwrap_or_else(Args::empty))
}

/// Reads a value as a string literal.
pub(crate) fn string(key: &Ident, value: &Expr, cx: &mut Ctxt) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        _ => {
            cx.error_spanned_by(value, format!("`{key}` takes a string literal"));
            None
        }
    }
}

/// Reads a value as an integer literal within `min..=u32::MAX`.
pub(crate) fn integer(key: &Ident, value: &Expr, min: u32, cx: &mut Ctxt) -> Option<u32> {
    let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = value
    else {
        cx.error_spanned_by(
            value,
            format!("`{key}` takes an integer literal, e.g. `{key} = 3`"),
        );
        return None;
    };
    match int.base10_parse::<u32>() {
        Ok(n) if n >= min => Some(n),
        Ok(_) => {
            cx.error_spanned_by(int, format!("`{key}` must be at least {min}"));
            None
        }
        Err(_) => {
            cx.error_spanned_by(
                int,
                format!("`{key}` must be an integer from {min} to {}", u32::MAX),
            );
            None
        }
    }
}

/// Reads a value as `true` or `false`.
pub(crate) fn boolean(key: &Ident, value: &Expr, cx: &mut Ctxt) -> Option<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(LitBool { value, .. }),
            ..
        }) => Some(*value),
        _ => {
            cx.error_spanned_by(value, format!("`{key}` takes `true` or `false`"));
            None
        }
    }
}

/// Reads a value as a type path (`upcast_from = UserCreatedV1`).
pub(crate) fn path(key: &Ident, value: &Expr, cx: &mut Ctxt) -> Option<Path> {
    match value {
        Expr::Path(p) if p.qself.is_none() => Some(p.path.clone()),
        _ => {
            cx.error_spanned_by(
                value,
                format!("`{key}` takes a type path, e.g. `{key} = UserCreatedV1`"),
            );
            None
        }
    }
}

/// Reads `key = [TypeA, path::TypeB]`: a list of type paths (may be empty).
pub(crate) fn paths(key: &Ident, value: &Expr, cx: &mut Ctxt) -> Option<Vec<Path>> {
    let message = format!("`{key}` takes a list of event types, e.g. `{key} = [WelcomeSent]`");
    let Expr::Array(array) = value else {
        cx.error_spanned_by(value, message);
        return None;
    };
    let mut paths = Vec::new();
    for element in &array.elems {
        match element {
            Expr::Path(p) if p.qself.is_none() => paths.push(p.path.clone()),
            _ => cx.error_spanned_by(element, &message),
        }
    }
    Some(paths)
}

/// Reads `crate = "path"`.
pub(crate) fn crate_path(key: &Ident, value: &Expr, cx: &mut Ctxt) -> Option<Path> {
    let lit = string(key, value, cx)?;
    match lit.parse::<Path>() {
        Ok(path) => Some(path),
        Err(_) => {
            cx.error_spanned_by(
                &lit,
                "`crate` takes a path, e.g. `crate = \"::my_reexport::eda\"`",
            );
            None
        }
    }
}

/// Reads one of a fixed set of string values.
pub(crate) fn choice(
    key: &Ident,
    value: &Expr,
    allowed: &[&str],
    cx: &mut Ctxt,
) -> Option<(String, Span)> {
    let lit = string(key, value, cx)?;
    let text = lit.value();
    if allowed.contains(&text.as_str()) {
        return Some((text, lit.span()));
    }
    let quoted: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    cx.error_spanned_by(
        &lit,
        format!(
            "unknown {key} `{text}`; expected one of: {}",
            quoted.join(", ")
        ),
    );
    None
}

/// Reads a duration literal, in nanoseconds.
pub(crate) fn duration(key: &Ident, value: &Expr, cx: &mut Ctxt) -> Option<(u64, LitStr)> {
    let lit = string(key, value, cx)?;
    match names::parse_duration(&lit.value()) {
        Ok(nanos) => Some((nanos, lit)),
        Err(why) => {
            cx.error_spanned_by(&lit, why);
            None
        }
    }
}
