use eda::prelude::*;
use eda::{Aggregate, AggregateEvents};

#[event("account.opened")]
pub struct AccountOpened {
    pub owner: String,
}

#[event("money.deposited")]
pub struct MoneyDeposited {
    pub cents: u64,
}

#[derive(AggregateEvents)]
#[aggregate_events(crate = "::eda")]
pub enum AccountEvent {
    Opened(AccountOpened),
    Deposited(MoneyDeposited),
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Deposited(d) = event {
            self.balance += d.cents;
        }
    }
}

fn main() {
    let event: AccountEvent = MoneyDeposited { cents: 5 }.into();
    assert_eq!(AccountEvent::NAMES, ["account.opened", "money.deposited"]);
    let mut account = Account::default();
    account.apply(&event);
    assert_eq!(account.balance, 5);
}
