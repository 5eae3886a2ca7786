use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler]
async fn on_any<E: Event>(_event: E) {}

fn main() {}
