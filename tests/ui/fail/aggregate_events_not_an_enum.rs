use eda::AggregateEvents;

#[derive(AggregateEvents)]
pub struct AccountEvent {
    pub cents: u64,
}

fn main() {}
