use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated<T> {
    pub id: T,
}

fn main() {}
