//! Code generated for an event: derives (attribute mode), `impl Event`, a registration.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Path, Token};

use super::parse::{EventInput, Mode};
use super::validate::EventSpec;

/// The item (with derives added or `Event` removed from its derive list) and the impls.
pub(crate) fn expand(spec: &EventSpec, input: EventInput) -> TokenStream {
    let krate = &spec.krate;
    let mut item = input.item;
    let derives = if spec.mode == Mode::Attribute {
        let serde_crate = format!("{}::__private::serde", path_text(krate));
        let schemars_crate = format!("{}::__private::schemars", path_text(krate));
        quote! {
            #[derive(#krate::__private::serde::Serialize, #krate::__private::serde::Deserialize, #krate::__private::schemars::JsonSchema)]
            #[serde(crate = #serde_crate)]
            #[schemars(crate = #schemars_crate)]
        }
    } else {
        TokenStream::new()
    };
    if spec.strip_derive_event {
        strip_event_derive(&mut item);
    }
    let impls = expand_impls(spec);
    quote! {
        #derives
        #item
        #impls
    }
}

/// `impl Event`, the compile-time checks and the catalog registration.
pub(crate) fn expand_impls(spec: &EventSpec) -> TokenStream {
    let EventSpec {
        ident,
        name,
        version,
        krate,
        ..
    } = spec;
    let ident_text = ident.to_string();
    let private = quote!(#krate::__private);

    let (oldest, decode, upcast_check, upcast_name) = match &spec.upcast_from {
        Some(prev) => {
            let prev_text = path_text(prev);
            let lower = version - 1;
            let not_same = format!("`{prev_text}` cannot be the `upcast_from` of `{ident_text}`: it must be the same event (`{name}`), but its NAME differs");
            let not_lower = format!("`{prev_text}` cannot be the `upcast_from` of `{ident_text}`: it must be version {lower} of `{name}`, one lower than {version}");
            (
                quote_spanned!(prev.span()=> <#prev as #krate::Event>::OLDEST_VERSION),
                quote_spanned!(prev.span()=> #private::decode_upcast::<Self, #prev>(version, payload)),
                quote_spanned! {prev.span()=>
                    const _: () = #private::assert_upcast::<#ident, #prev>(#not_same, #not_lower);
                },
                quote!(::core::option::Option::Some(#prev_text)),
            )
        }
        None => (
            quote!(#version),
            quote!(#private::decode_exact::<Self>(version, payload)),
            TokenStream::new(),
            quote!(::core::option::Option::None),
        ),
    };

    let derive_checks = if spec.mode == Mode::Derive {
        quote_spanned! {ident.span()=>
            const _: () = #private::assert_serialize::<#ident>();
            const _: () = #private::assert_deserialize::<#ident>();
            const _: () = #private::assert_json_schema::<#ident>();
        }
    } else {
        TokenStream::new()
    };

    quote! {
        #[automatically_derived]
        impl #krate::Event for #ident {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            const OLDEST_VERSION: u32 = #oldest;
            fn decode_version(
                version: u32,
                payload: &[u8],
            ) -> ::core::result::Result<Self, #krate::DecodeError> {
                #decode
            }
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            #upcast_check
            #derive_checks
            #private::inventory::submit! {
                #private::EventDescriptor::of::<#ident>(#ident_text, #upcast_name)
            }
        };
    }
}

fn path_text(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// Removes `Event` from the item's derive lists (dropping a list left empty).
fn strip_event_derive(item: &mut syn::DeriveInput) {
    item.attrs.retain_mut(|attr| {
        if !attr.path().is_ident("derive") {
            return true;
        }
        let Ok(paths) = attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
        else {
            return true;
        };
        let kept: Punctuated<Path, Token![,]> = paths
            .into_iter()
            .filter(|p| p.segments.last().is_none_or(|s| s.ident != "Event"))
            .collect();
        if kept.is_empty() {
            return false;
        }
        *attr = syn::parse_quote!(#[derive(#kept)]);
        true
    });
}
