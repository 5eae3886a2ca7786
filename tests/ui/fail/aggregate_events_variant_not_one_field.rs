use eda::prelude::*;
use eda::AggregateEvents;

#[event("account.opened")]
pub struct AccountOpened {
    pub owner: String,
}

#[event("money.deposited")]
pub struct MoneyDeposited {
    pub cents: u64,
}

#[derive(AggregateEvents)]
pub enum AccountEvent {
    Opened(AccountOpened),
    Deposited(MoneyDeposited, u64),
    Closed,
    Renamed { name: String },
}

fn main() {}
