//! Procedural macros of [eda](https://docs.rs/eda): `#[event]`, `#[derive(Event)]`,
//! `#[handler]` and `#[derive(AggregateEvents)]`. Use them through the `eda` crate, which
//! re-exports them; the generated code names the runtime as `::eda` (override with
//! `crate = "path"`).

mod aggregate_events;
mod attr;
mod ctxt;
mod event;
mod handler;
mod names;

use proc_macro::TokenStream;

/// Makes a struct or enum a typed, versioned event: adds serde and schemars derives and
/// implements `eda::Event`. See the `eda` crate docs.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    event::attribute(args.into(), item.into()).into()
}

/// Implements `eda::Event` for a type that derives serde's `Serialize`/`Deserialize` and
/// schemars' `JsonSchema` itself; options go in an `#[event(...)]` helper attribute.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(item: TokenStream) -> TokenStream {
    event::derive(item.into()).into()
}

/// Registers an `async fn` as an event handler, discovered by `eda::App` at startup.
/// See the `eda` crate docs for the accepted signatures and options.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::attribute(args.into(), item.into()).into()
}

/// Implements `eda::AggregateEvents` for an enum whose variants each hold one event
/// (`Opened(AccountOpened)`), and `From` each event into the enum; options go in an
/// `#[aggregate_events(crate = "path")]` helper attribute. See `eda::Aggregate`.
#[proc_macro_derive(AggregateEvents, attributes(aggregate_events))]
pub fn derive_aggregate_events(item: TokenStream) -> TokenStream {
    aggregate_events::derive(item.into()).into()
}
