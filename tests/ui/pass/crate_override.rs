//! `crate = "path"` names the runtime where the user re-exported it (as serde's and tokio's
//! `crate` options do), on `#[event]`, `#[handler]` and the `#[derive(Event)]` helper.

mod reexport {
    pub use ::eda as runtime;
}

use reexport::runtime::__private::schemars::JsonSchema;
use reexport::runtime::__private::serde::{Deserialize, Serialize};

#[reexport::runtime::event("parcel.sent", crate = "reexport::runtime")]
pub struct ParcelSent {
    pub id: u64,
}

#[derive(Serialize, Deserialize, JsonSchema, reexport::runtime::Event)]
#[serde(crate = "reexport::runtime::__private::serde")]
#[schemars(crate = "reexport::runtime::__private::schemars")]
#[event("parcel.lost", crate = "reexport::runtime")]
pub struct ParcelLost {
    pub id: u64,
}

#[reexport::runtime::handler(crate = "reexport::runtime")]
async fn on_sent(_event: ParcelSent, _ctx: reexport::runtime::Context) {}

fn main() {
    use reexport::runtime::Event;
    assert_eq!(ParcelSent::NAME, "parcel.sent");
    assert_eq!(ParcelLost::NAME, "parcel.lost");
}
