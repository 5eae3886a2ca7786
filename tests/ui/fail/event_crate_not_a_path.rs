use eda::prelude::*;

#[event("user.created", crate = "not a path!")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
