use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler(emits = "welcome.sent")]
async fn on_user(_event: UserCreated) {}

fn main() {}
