use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[handler(name = "on user")]
async fn on_user(_event: UserCreated) {}

#[handler(name = "")]
async fn on_user_again(_event: UserCreated) {}

fn main() {}
