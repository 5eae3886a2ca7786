use eda::Event;
use eda::__private::serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Event)]
#[serde(crate = "eda::__private::serde")]
#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
