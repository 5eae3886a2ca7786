use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler(base_delay = "1m", max_delay = "10s")]
async fn on_user(_event: UserCreated) {}

fn main() {}
