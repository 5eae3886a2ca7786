//! The diagnostics of `#[event]`, `#[derive(Event)]`, `#[handler]` and
//! `#[derive(AggregateEvents)]`: one file per mistake in
//! `tests/ui/fail/` with the compiler output it must produce, and correct uses in
//! `tests/ui/pass/`. Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test --test ui`
//! and review every diff; rustc's wording drifts between releases.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
