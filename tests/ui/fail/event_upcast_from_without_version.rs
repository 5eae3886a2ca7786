use eda::prelude::*;

#[event("user.created", version = 1)]
pub struct UserCreatedV1 {
    pub id: u64,
}

#[event("user.created", upcast_from = UserCreatedV1)]
pub struct UserCreated {
    pub id: u64,
}

impl From<UserCreatedV1> for UserCreated {
    fn from(v1: UserCreatedV1) -> Self {
        UserCreated { id: v1.id }
    }
}

fn main() {}
