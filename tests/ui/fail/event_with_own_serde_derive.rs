use eda::prelude::*;
use eda::__private::serde::Serialize;

#[event("user.created")]
#[derive(Serialize)]
#[serde(crate = "eda::__private::serde")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
