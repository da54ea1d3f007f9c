//! Compile errors of `#[task]`, pinned by trybuild: one mistake per file in `tests/ui/cases/`, each
//! `.stderr` reviewed for a span on the wrong token and a message saying what to write instead.

#[test]
fn mistakes_are_reported_where_they_are() {
    // trybuild builds the cases' dependencies with cargo, whose progress ("Checking serde ...")
    // would fill a green run's output; errors and warnings still show. This is the binary's only
    // test, so no other thread reads the environment while it is set.
    // SAFETY: as just said, no other thread reads or writes the environment.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let cases = trybuild::TestCases::new();
    cases.compile_fail("cases/*.rs");
    // An `async fn` task is a mistake only without the `tokio` feature.
    #[cfg(not(feature = "tokio"))]
    cases.compile_fail("cases/without-tokio/*.rs");
}
