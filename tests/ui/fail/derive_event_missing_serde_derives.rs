use eda::Event;

#[derive(Event)]
#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

fn main() {}
