//! The `#[event]` attribute written before `#[derive(Event)]` notices the derive: it adds no
//! serde or schemars derives of its own and `Event` is implemented once. (A bare `#[event]`
//! there is ambiguous to rustc when both come from the prelude; the path `#[eda::event]` or
//! putting the derive first, as the helper attribute, avoids that.)

use eda::prelude::*;
use eda::__private::schemars::JsonSchema;
use eda::__private::serde::{Deserialize, Serialize};

#[eda::event("user.deleted", version = 1)]
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Event)]
#[serde(crate = "eda::__private::serde")]
#[schemars(crate = "eda::__private::schemars")]
pub struct UserDeleted {
    pub id: u64,
}

#[handler]
async fn on_deleted(event: UserDeleted) {
    let _copy = event.clone();
}

fn main() {
    assert_eq!(UserDeleted::NAME, "user.deleted");
}
