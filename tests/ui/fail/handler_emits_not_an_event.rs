use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

pub struct NotAnEvent;

#[handler(emits = [NotAnEvent])]
async fn on_user(_event: UserCreated) {}

fn main() {}
