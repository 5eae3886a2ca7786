//! The bank's aggregate: an account, its events, and the decisions on it.

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

#[event("money.withdrawn")]
pub struct MoneyWithdrawn {
    pub cents: u64,
}

#[derive(AggregateEvents)]
pub enum AccountEvent {
    Opened(AccountOpened),
    Deposited(MoneyDeposited),
    Withdrawn(MoneyWithdrawn),
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: u64,
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Event = AccountEvent;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(_) => self.open = true,
            AccountEvent::Deposited(d) => self.balance += d.cents,
            AccountEvent::Withdrawn(w) => self.balance -= w.cents,
        }
    }
}

/// Why a command was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    NotOpen,
    InsufficientFunds { balance: u64 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotOpen => f.write_str("the account is not open"),
            Refused::InsufficientFunds { balance } => {
                write!(f, "insufficient funds (balance {balance})")
            }
        }
    }
}

/// Opening: an account opens once, with a first deposit (one append of two events).
pub fn open(account: &Account, owner: &str, first: u64) -> Result<Vec<AccountEvent>, Refused> {
    if account.open {
        return Ok(Vec::new()); // opened already: nothing to do
    }
    Ok(vec![
        AccountEvent::Opened(AccountOpened {
            owner: owner.to_owned(),
        }),
        AccountEvent::Deposited(MoneyDeposited { cents: first }),
    ])
}

pub fn deposit(account: &Account, cents: u64) -> Result<Vec<AccountEvent>, Refused> {
    if !account.open {
        return Err(Refused::NotOpen);
    }
    Ok(vec![AccountEvent::Deposited(MoneyDeposited { cents })])
}

pub fn withdraw(account: &Account, cents: u64) -> Result<Vec<AccountEvent>, Refused> {
    if !account.open {
        return Err(Refused::NotOpen);
    }
    if account.balance < cents {
        return Err(Refused::InsufficientFunds {
            balance: account.balance,
        });
    }
    Ok(vec![AccountEvent::Withdrawn(MoneyWithdrawn { cents })])
}
