//! `#[derive(Event)]` next to the user's own serde and schemars derives, with only `eda` as a
//! dependency: the derives are named through `eda::__private` and told where their crate is.

use eda::Event;

#[derive(
    eda::__private::serde::Serialize,
    eda::__private::serde::Deserialize,
    eda::__private::schemars::JsonSchema,
    Event,
)]
#[serde(crate = "eda::__private::serde", rename_all = "camelCase")]
#[schemars(crate = "eda::__private::schemars")]
#[event("user.renamed", version = 1)]
pub struct UserRenamed {
    pub user_id: u64,
    pub new_name: String,
}

fn main() {
    assert_eq!(UserRenamed::NAME, "user.renamed");
    assert_eq!(UserRenamed::VERSION, 1);
}
