use eda::prelude::*;

#[event("user.created", versoin = 2)]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
