//! One name for "the process backend is built": the `process` feature on Linux, the only system
//! whose calls it uses (`prctl`, `memfd`, `/proc`). Elsewhere the feature compiles and a process
//! pool is refused at `build` with `BackendUnavailable`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(process_backend)");
    // `RUSTFLAGS="--cfg loom"` builds the protocols on loom's primitives to model-check them
    // (`src/sync.rs`); the backend around them, which needs real shared memory, is left out.
    println!("cargo::rustc-check-cfg=cfg(loom)");
    let is_loom = std::env::var_os("CARGO_CFG_LOOM").is_some();
    let is_linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if is_linux && !is_loom && std::env::var_os("CARGO_FEATURE_PROCESS").is_some() {
        println!("cargo::rustc-cfg=process_backend");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
