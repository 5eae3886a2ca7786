//! `notifications`: tells users about their account and payments, and publishes
//! `notification.sent`. It keeps handling `user.created` v1 from an older producer: those
//! arrive upcast to v2 and are counted in `shop_users_upgraded_total`.

#![allow(missing_docs, missing_debug_implementations)]

#[path = "shop/events.rs"]
mod events;

use eda::prelude::*;
use events::*;

async fn notify(ctx: &Context, user_id: u64, kind: &str) -> Result<(), HandlerError> {
    ctx.publish(&NotificationSent {
        user_id,
        kind: kind.to_owned(),
    })
    .await?;
    Ok(())
}

#[handler(service = "notifications", concurrency = 4, emits = [NotificationSent])]
async fn welcome(event: Envelope<UserCreated>, ctx: Context) -> Result<(), HandlerError> {
    if event.metadata.version == 1 {
        metrics::counter!("shop_users_upgraded_total").increment(1);
    }
    notify(&ctx, event.id, "welcome").await
}

#[handler(service = "notifications", concurrency = 4, emits = [NotificationSent])]
async fn receipt(event: PaymentSucceeded, ctx: Context) -> Result<(), HandlerError> {
    notify(&ctx, event.user_id, "receipt").await
}

#[handler(service = "notifications", concurrency = 4, emits = [NotificationSent])]
async fn payment_problem(event: PaymentFailed, ctx: Context) -> Result<(), HandlerError> {
    notify(&ctx, event.user_id, "payment_failed").await
}

#[handler(service = "notifications", concurrency = 4, emits = [NotificationSent])]
async fn bill_settled(event: BillPaid, ctx: Context) -> Result<(), HandlerError> {
    notify(&ctx, event.user_id, "bill_paid").await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    metrics::describe_counter!(
        "shop_users_upgraded_total",
        "user.created v1 events handled as v2"
    );
    shop_app("notifications").run().await?;
    Ok(())
}
