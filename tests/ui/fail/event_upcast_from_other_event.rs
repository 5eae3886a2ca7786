use eda::prelude::*;

#[event("account.opened", version = 1)]
pub struct AccountOpened {
    pub id: u64,
}

#[event("user.created", version = 2, upcast_from = AccountOpened)]
pub struct UserCreated {
    pub id: u64,
}

impl From<AccountOpened> for UserCreated {
    fn from(v1: AccountOpened) -> Self {
        UserCreated { id: v1.id }
    }
}

fn main() {}
