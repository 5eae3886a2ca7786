use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler]
async fn audit(_event: RawEvent) {}

fn main() {}
