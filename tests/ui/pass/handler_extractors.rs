//! Every kind of handler parameter: `Envelope<E>`, `RawEvent`, `Context`, `State<T>`, and the
//! accepted return types.

use eda::prelude::*;

#[event("user.created")]
pub struct UserCreated {
    pub id: u64,
}

#[event]
pub struct WelcomeSent {
    pub user_id: u64,
}

pub struct Mailer {
    pub from: &'static str,
}

#[handler]
async fn with_envelope(
    envelope: Envelope<UserCreated>,
    ctx: Context,
    mailer: State<Mailer>,
) -> Result<(), HandlerError> {
    let _from = mailer.from;
    let _attempt: u32 = envelope.attempt;
    ctx.publish(&WelcomeSent { user_id: envelope.id }).await?;
    Ok(())
}

#[handler]
async fn state_before_context(_event: UserCreated, _mailer: State<Mailer>, _ctx: Context) {}

#[handler]
async fn io_error(_event: UserCreated) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler("user.*")]
async fn every_user_event(event: RawEvent, _ctx: Context) {
    let _name = event.name();
}

#[handler("user.created")]
async fn explicit_subject(_event: UserCreated) {}

fn main() {}
