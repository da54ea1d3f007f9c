//! The registry is complete before `main`, with every task in a dependency crate, in a debug
//! build and in a release build with fat LTO: the fixture binary `registry-app` prints what a
//! pre-`main` constructor saw, and this test builds and runs it in both profiles. The fixture also
//! runs its tasks in worker processes, which proves the linker kept the worker's entry
//! constructor.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXPECTED: &str =
    "fixture::counter,registry_lib::Reverse,registry_lib::checksum,registry_lib::pid";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Builds `registry-app` in `profile` with its own target directory (the one running this test
/// is locked by the outer cargo) and returns what it printed.
fn run_fixture(profile: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(workspace())
        .args(["run", "--quiet", "--package", "registry-app", "--profile", profile])
        .env("CARGO_TARGET_DIR", workspace().join("target").join("fixtures"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "registry-app ({profile}) failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn check(stdout: &str) {
    assert!(stdout.contains(&format!("before main: {EXPECTED}\n")), "{stdout}");
    assert!(stdout.contains(&format!("in main: {EXPECTED}\n")), "{stdout}");
    assert!(stdout.contains("checksum: Some(2720513876)"), "{stdout}");
    assert!(stdout.contains("counter: Some(3)"), "{stdout}");
    assert!(stdout.contains("reverse: Some(\"cba\") as registry_lib::Reverse"), "{stdout}");
}

#[test]
fn tasks_of_a_dependency_are_registered_before_main_in_a_debug_build() {
    check(&run_fixture("dev"));
}

#[test]
fn tasks_of_a_dependency_are_registered_before_main_with_fat_lto() {
    check(&run_fixture("release-lto"));
}
