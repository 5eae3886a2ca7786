use eda::AggregateEvents;

pub struct NotAnEvent {
    pub cents: u64,
}

#[derive(AggregateEvents)]
pub enum AccountEvent {
    Deposited(NotAnEvent),
}

fn main() {}
