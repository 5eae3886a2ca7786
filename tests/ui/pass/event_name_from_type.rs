//! Without a literal the name is the type's name, dotted: `HTTPRequestFailed` ->
//! `http.request.failed`.

use eda::prelude::*;

#[event]
pub struct HTTPRequestFailed {
    pub status: u16,
}

#[event(version = 2, upcast_from = OrderPlacedV1)]
pub struct OrderPlaced {
    pub id: u64,
    pub total_cents: u64,
}

#[event("order.placed")]
pub struct OrderPlacedV1 {
    pub id: u64,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(v1: OrderPlacedV1) -> Self {
        OrderPlaced { id: v1.id, total_cents: 0 }
    }
}

fn main() {
    assert_eq!(HTTPRequestFailed::NAME, "http.request.failed");
    assert_eq!(OrderPlaced::NAME, "order.placed");
    assert_eq!(OrderPlaced::OLDEST_VERSION, 1);
}
