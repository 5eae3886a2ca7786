use eda::prelude::*;

#[event("user.created")]
pub struct UserCreatedV1 {
    pub id: u64,
}

#[event("user.created", version = 2, upcast_from = "UserCreatedV1")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
