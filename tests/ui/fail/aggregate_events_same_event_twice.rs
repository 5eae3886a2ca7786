use eda::prelude::*;
use eda::AggregateEvents;

#[event("money.deposited")]
pub struct MoneyDeposited {
    pub cents: u64,
}

#[derive(AggregateEvents)]
pub enum AccountEvent {
    Deposited(MoneyDeposited),
    Credited(MoneyDeposited),
}

fn main() {}
