use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

pub struct Mailer;

impl Mailer {
    #[handler]
    async fn on_user(&self, _event: UserCreated) {}
}

fn main() {}
