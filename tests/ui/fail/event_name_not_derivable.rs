use eda::prelude::*;

#[event]
pub struct CaféOuvert {
    pub id: u64,
}

fn main() {}
