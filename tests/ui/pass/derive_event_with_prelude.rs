//! `#[derive(Event)]` with the prelude imported: the derive first, then `#[event(...)]` as its
//! helper attribute.

use eda::__private::schemars::JsonSchema;
use eda::__private::serde::{Deserialize, Serialize};
use eda::prelude::*;

#[derive(Debug, Serialize, Deserialize, JsonSchema, Event)]
#[serde(crate = "eda::__private::serde")]
#[schemars(crate = "eda::__private::schemars")]
#[event("invoice.voided", version = 2)]
pub struct InvoiceVoided {
    pub number: u64,
}

#[handler]
async fn on_voided(event: InvoiceVoided) {
    let _ = event.number;
}

fn main() {
    assert_eq!(InvoiceVoided::NAME, "invoice.voided");
    assert_eq!(InvoiceVoided::VERSION, 2);
}
