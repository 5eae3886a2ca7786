//! The events of the shop: a billing and notification domain shared by the example services
//! (`shop_orders`, `shop_billing`, `shop_notifications`, `shop_analytics`). Each service
//! includes this file, as services would share an events crate.

// Each service uses some of these events only.
#![allow(dead_code)]

use eda::prelude::*;

/// A new user (version 2 added the display name).
#[event("user.created", version = 2, upcast_from = UserCreatedV1)]
pub struct UserCreated {
    pub id: u64,
    pub email: String,
    pub name: String,
}

/// Version 1, still published by an older producer.
#[event("user.created", version = 1)]
pub struct UserCreatedV1 {
    pub id: u64,
    pub email: String,
}

impl From<UserCreatedV1> for UserCreated {
    fn from(v1: UserCreatedV1) -> Self {
        let name = v1.email.split('@').next().unwrap_or_default().to_owned();
        UserCreated {
            id: v1.id,
            email: v1.email,
            name,
        }
    }
}

#[event("bill.created")]
pub struct BillCreated {
    pub bill_id: u64,
    pub user_id: u64,
    pub amount_cents: u64,
}

#[event("payment.requested")]
pub struct PaymentRequested {
    pub bill_id: u64,
    pub user_id: u64,
    pub amount_cents: u64,
}

#[event("payment.succeeded")]
pub struct PaymentSucceeded {
    pub bill_id: u64,
    pub user_id: u64,
    pub amount_cents: u64,
}

#[event("payment.failed")]
pub struct PaymentFailed {
    pub bill_id: u64,
    pub user_id: u64,
    pub reason: String,
}

#[event("bill.paid")]
pub struct BillPaid {
    pub bill_id: u64,
    pub user_id: u64,
}

#[event("notification.sent")]
pub struct NotificationSent {
    pub user_id: u64,
    pub kind: String,
}

/// The app builder every shop service starts from: NATS at `EDA_NATS_URL` (default
/// `nats://127.0.0.1:4222`), metrics at `EDA_METRICS_ADDR` when set.
pub fn shop_app(service: &str) -> eda::AppBuilder {
    eda::App::builder(service).nats("nats://127.0.0.1:4222")
}
