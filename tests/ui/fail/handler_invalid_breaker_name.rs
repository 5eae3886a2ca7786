use eda::prelude::*;

#[event("mail.requested")]
pub struct MailRequested {
    pub id: u64,
}

#[handler(breaker = "smtp.relay")]
async fn send_mail(_event: MailRequested) {}

fn main() {}
