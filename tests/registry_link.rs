//! The registry is complete before `main`, with every task in a dependency crate, in a release
//! build with fat LTO: this test builds the fixture binary `registry-app` in the `release-lto`
//! profile and runs it; it prints what a pre-`main` constructor saw. The fixture also runs its
//! tasks in worker processes, which proves the linker kept the worker's entry constructor. The
//! debug build is tested by the fixture's own test, `registered_before_main.rs`, which `cargo
//! test` builds with the artifacts the other tests share.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "fixtures/registry-app/tests/output/mod.rs"]
mod output;

#[test]
fn tasks_of_a_dependency_are_registered_before_main_with_fat_lto() {
    // A target directory of its own, inside this build's: no other build uses this profile, and
    // so the outer build's lock, if cargo keeps it while tests run, is no matter.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("registry-link");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let build = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--package", "registry-app", "--profile", "release-lto"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        build.status.success(),
        "registry-app does not build with fat LTO: {}\n{}",
        build.status,
        String::from_utf8_lossy(&build.stderr)
    );
    let program: PathBuf = target.join("release-lto").join("registry-app");
    output::check(&output::run(&program, "release with fat LTO"));
}
