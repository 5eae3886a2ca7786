use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler]
async fn on_user(_event: UserCreated, _retries: u32) {}

fn main() {}
