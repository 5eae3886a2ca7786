use eda::prelude::*;

#[event("user.created")]
pub union UserCreated {
    pub id: u64,
    pub code: u32,
}

fn main() {}
