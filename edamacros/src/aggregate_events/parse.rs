//! Syntax of `#[aggregate_events(...)]`, the derive's helper attribute.

use syn::DeriveInput;

use crate::attr::{self, Args};
use crate::ctxt::Ctxt;

/// Keys `#[aggregate_events(...)]` accepts.
pub(crate) const KEYS: &[&str] = &["crate"];

const HINT: &str = "#[aggregate_events(crate = \"::my_reexport::eda\")]";

/// Reads the helper attribute of the enum.
pub(crate) fn parse_helper_args(input: &DeriveInput, cx: &mut Ctxt) -> syn::Result<Args> {
    attr::helper_args(&input.attrs, "aggregate_events", KEYS, HINT, cx)
}
