use eda::prelude::*;

#[event("user.created")]
pub fn user_created() {}

fn main() {}
