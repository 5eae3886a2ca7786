use eda::prelude::*;

#[event("User.created")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
