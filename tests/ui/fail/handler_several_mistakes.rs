//! Every mistake in one attribute is reported in one compile, each at its token.
use eda::prelude::*;

#[event("order.placed")]
pub struct OrderPlaced {
    pub id: u64,
}

#[handler(retries = "three", backoff = "quadratic", timeout = "10 seconds")]
async fn on_placed(_event: OrderPlaced) {}

fn main() {}
