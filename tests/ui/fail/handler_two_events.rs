use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[event("order.placed")]
pub struct OrderPlaced {
    pub id: u64,
}

#[handler]
async fn on_user(_event: UserCreated, _order: OrderPlaced) {}

fn main() {}
