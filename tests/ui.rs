//! Compile errors of `#[task]`, pinned by trybuild: one mistake per file in `tests/ui/`, each
//! `.stderr` reviewed for a span on the wrong token and a message saying what to write instead.

#[test]
fn mistakes_are_reported_where_they_are() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    // An `async fn` task is a mistake only without the `tokio` feature.
    #[cfg(not(feature = "tokio"))]
    cases.compile_fail("tests/ui/without-tokio/*.rs");
}
