//! Code generated for aggregate events: `impl AggregateEvents`, a `From` per event, and the
//! compile-time checks (each variant holds an event; no two events share a name).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use super::validate::AggregateEventsSpec;

/// The impls; the enum itself is the user's, unchanged.
pub(crate) fn expand(spec: &AggregateEventsSpec) -> TokenStream {
    let AggregateEventsSpec {
        ident,
        krate,
        variants,
    } = spec;
    let private = quote!(#krate::__private);
    let names = variants
        .iter()
        .map(|(_, ty)| quote!(<#ty as #private::Event>::NAME));
    let encode = variants.iter().map(|(variant, ty)| {
        let private = respanned(&private, ty.span());
        quote_spanned!(ty.span()=> Self::#variant(event) => #private::encode_event(event),)
    });
    let decode = variants.iter().map(|(variant, ty)| {
        quote! {
            if name == <#ty as #private::Event>::NAME {
                return ::core::option::Option::Some(
                    #private::decode_event::<#ty>(version, payload).map(Self::#variant),
                );
            }
        }
    });
    let froms = variants.iter().map(|(variant, ty)| {
        quote! {
            #[automatically_derived]
            impl ::core::convert::From<#ty> for #ident {
                fn from(event: #ty) -> Self {
                    Self::#variant(event)
                }
            }
        }
    });
    let is_event = variants.iter().map(|(_, ty)| {
        let private = respanned(&private, ty.span());
        quote_spanned!(ty.span()=> const _: () = #private::assert_event::<#ty>();)
    });
    let mut distinct = Vec::new();
    for (i, (first, a)) in variants.iter().enumerate() {
        for (second, b) in &variants[i + 1..] {
            let message = format!(
                "variants `{first}` and `{second}` of `{ident}` hold events of the same name (`{}` and `{}`): an aggregate's events hold each event once, in its newest version (older versions are upcast on load)",
                a.to_token_stream().to_string().replace(' ', ""),
                b.to_token_stream().to_string().replace(' ', ""),
            );
            let private = respanned(&private, b.span());
            distinct.push(quote_spanned! {b.span()=>
                const _: () = #private::assert_distinct_events::<#a, #b>(#message);
            });
        }
    }
    quote! {
        #[automatically_derived]
        impl #krate::AggregateEvents for #ident {
            const NAMES: &'static [&'static str] = &[#(#names),*];

            fn encode(
                &self,
            ) -> ::core::result::Result<#private::EncodedEvent, #private::EncodeError> {
                match self {
                    #(#encode)*
                }
            }

            fn decode(
                name: &str,
                version: u32,
                payload: &[u8],
            ) -> ::core::option::Option<::core::result::Result<Self, #krate::DecodeError>> {
                #(#decode)*
                ::core::option::Option::None
            }
        }

        #(#froms)*

        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            #(#is_event)*
            #(#distinct)*
        };
    }
}

/// `tokens` with every token at `span`, so that a check's error points at the user's type
/// rather than at the derive.
fn respanned(tokens: &TokenStream, span: Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}
