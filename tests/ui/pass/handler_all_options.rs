//! `#[handler]` with a name, a service and every option.

use eda::prelude::*;

#[event("invoice.issued")]
pub struct InvoiceIssued {
    pub id: u64,
}

#[handler(
    "invoice.issued",
    name = "email-invoice",
    service = "billing",
    concurrency = 8,
    retries = 10,
    backoff = "linear",
    base_delay = "250ms",
    max_delay = "1m30s",
    jitter = false,
    timeout = "2m",
    idempotent = "always",
    breaker = "smtp",
    start = "all",
    crate = "::eda"
)]
async fn email_invoice(_event: InvoiceIssued) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(name = "fixed_backoff", backoff = "fixed", idempotent = "off", start = "new")]
async fn fixed(_event: InvoiceIssued) {}

fn main() {}
