use eda::prelude::*;

#[event("")]
pub struct UserCreated {
    pub id: u64,
}

#[event("user/deleted")]
pub struct UserDeleted {
    pub id: u64,
}

fn main() {}
