use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler("user.>.created")]
async fn on_user(_event: RawEvent) {}

fn main() {}
