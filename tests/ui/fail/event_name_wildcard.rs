use eda::prelude::*;

#[event("user.*")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
