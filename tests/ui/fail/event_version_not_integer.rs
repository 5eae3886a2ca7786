use eda::prelude::*;

#[event("user.created", version = "2")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
