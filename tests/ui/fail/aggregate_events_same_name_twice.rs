use eda::prelude::*;
use eda::AggregateEvents;

#[event("money.deposited", version = 1)]
pub struct MoneyDepositedV1 {
    pub cents: u64,
}

#[event("money.deposited", version = 2, upcast_from = MoneyDepositedV1)]
pub struct MoneyDeposited {
    pub cents: u64,
    pub memo: String,
}

impl From<MoneyDepositedV1> for MoneyDeposited {
    fn from(v1: MoneyDepositedV1) -> Self {
        MoneyDeposited { cents: v1.cents, memo: String::new() }
    }
}

#[derive(AggregateEvents)]
pub enum AccountEvent {
    Deposited(MoneyDeposited),
    DepositedV1(MoneyDepositedV1),
}

fn main() {}
