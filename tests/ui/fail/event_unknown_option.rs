use eda::prelude::*;

#[event("user.created", subject = "users")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
