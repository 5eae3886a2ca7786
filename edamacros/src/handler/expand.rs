//! Code generated for a handler: the function unchanged, one invoke shim, one registration.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use super::validate::HandlerSpec;
use crate::names;

pub(crate) fn expand(spec: &HandlerSpec, function: &ItemFn) -> TokenStream {
    let krate = &spec.krate;
    let private = quote!(#krate::__private);
    let fn_ident = &function.sig.ident;
    let event_ty = &spec.event_ty;
    let name = &spec.name;

    let param_idents: Vec<_> = (0..spec.params.len())
        .map(|i| format_ident!("__eda_param{}", i))
        .collect();
    let extracts = spec.params.iter().zip(&param_idents).map(|(ty, ident)| {
        quote_spanned!(ty.span()=> let #ident = #private::extract::<#ty>(&__eda_invocation)?;)
    });
    let requirements = spec
        .params
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> #private::requirement::<#ty>));
    let call = quote!(#fn_ident(__eda_event #(, #param_idents)*).await);
    let returned = match &spec.output {
        Some(ty) => quote_spanned!(ty.span()=> #private::handler_return::<#ty>(#call)),
        None => quote!(#private::handler_return::<()>(#call)),
    };

    let (subject_arg, check_span, wildcard) = match &spec.subject {
        Some(lit) => (
            quote!(::core::option::Option::Some(#lit)),
            lit.span(),
            names::is_wildcard(&lit.value()),
        ),
        None => (quote!(::core::option::Option::None), event_ty.span(), false),
    };
    let subject_text = spec.subject.as_ref().map(|l| l.value()).unwrap_or_default();
    let event_text = quote!(#event_ty).to_string().replace(' ', "");
    let mismatch = format!("the subject `{subject_text}` of handler `{name}` is not the NAME of its event `{event_text}`; leave the subject out (`#[handler]`) to take the event's NAME");
    let typed_wildcard = format!("the wildcard subject `{subject_text}` of handler `{name}` needs `RawEvent` as the event parameter, not `{event_text}`");
    let raw_without_subject = format!("handler `{name}` takes `RawEvent`, which has no event NAME: give it a subject, e.g. `#[handler(\"payment.*\")]`");
    let subject_check = quote_spanned! {check_span=>
        const _: () = #private::assert_handler_subject::<#event_ty>(
            #subject_arg, #wildcard, #mismatch, #typed_wildcard, #raw_without_subject,
        );
    };

    let service = match &spec.service {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    };
    let breaker = match &spec.breaker {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    };
    let emits = match &spec.emits {
        Some(types) => {
            let names = types
                .iter()
                .map(|ty| quote_spanned!(ty.span()=> <#ty as #private::Event>::NAME));
            quote!(::core::option::Option::Some(&[#(#names),*]))
        }
        None => quote!(::core::option::Option::None),
    };
    let variant = |s: &str| format_ident!("{}", capitalize(s), span = Span::call_site());
    let backoff = variant(&spec.backoff);
    let idempotent = variant(&spec.idempotent);
    let start = variant(&spec.start);
    let HandlerSpec {
        concurrency,
        retries,
        base_delay,
        max_delay,
        jitter,
        timeout,
        ..
    } = spec;
    let event_span = event_ty.span();
    let event_info = quote_spanned!(event_span=> <#event_ty as #private::EventParam>::EVENT);
    let event_extract =
        quote_spanned!(event_span=> #private::event_param::<#event_ty>(&__eda_invocation)?);

    quote! {
        #function

        #[doc(hidden)]
        #[allow(non_snake_case, non_upper_case_globals, clippy::all)]
        const _: () = {
            #subject_check

            fn __eda_invoke(
                __eda_invocation: #private::Invocation,
            ) -> #private::BoxFuture<'static, #private::InvokeResult> {
                ::std::boxed::Box::pin(async move {
                    let __eda_event = #event_extract;
                    #(#extracts)*
                    #returned
                })
            }

            #private::inventory::submit! {
                #private::HandlerDescriptor {
                    name: #name,
                    subject: #private::handler_subject::<#event_ty>(#subject_arg),
                    service: #service,
                    event: #event_info,
                    options: #private::HandlerOptions {
                        concurrency: #concurrency,
                        retries: #retries,
                        backoff: #private::BackoffPolicy {
                            kind: #private::Backoff::#backoff,
                            base_delay: #private::Duration::from_nanos(#base_delay),
                            max_delay: #private::Duration::from_nanos(#max_delay),
                            jitter: #jitter,
                        },
                        timeout: #private::Duration::from_nanos(#timeout),
                        idempotent: #private::Idempotency::#idempotent,
                        breaker: #breaker,
                        start: #private::Start::#start,
                    },
                    emits: #emits,
                    requirements: &[#(#requirements),*],
                    invoke: __eda_invoke,
                    module_path: ::core::module_path!(),
                }
            }
        };
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
