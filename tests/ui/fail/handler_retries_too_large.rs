use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler(retries = 99999999999)]
async fn on_user(_event: UserCreated) {}

fn main() {}
