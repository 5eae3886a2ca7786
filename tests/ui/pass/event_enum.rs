//! `#[event]` on an enum: serde's default (externally tagged) representation.

use eda::prelude::*;

#[event("payment.settled", version = 1)]
pub enum PaymentSettled {
    Card { last4: String },
    Transfer { iban: String },
    Cash,
}

#[handler]
async fn on_payment(event: PaymentSettled) {
    match event {
        PaymentSettled::Card { last4 } => drop(last4),
        PaymentSettled::Transfer { iban } => drop(iban),
        PaymentSettled::Cash => {}
    }
}

fn main() {
    assert_eq!(PaymentSettled::NAME, "payment.settled");
    assert_eq!(PaymentSettled::VERSION, 1);
}
