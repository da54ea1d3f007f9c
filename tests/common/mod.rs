//! Helpers shared by the integration tests that coordinate with worker processes through files.
//! Each test binary includes this module and uses part of it.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::path::{Path, PathBuf};

/// A scratch directory for one test, removed when dropped; tasks on any backend can see it.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
}

impl Scratch {
    pub(crate) fn new(test: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "parallel-test-{}-{test}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        ));
        fs::create_dir_all(&path).expect("temp dir is writable");
        Scratch { path }
    }

    /// The path of `name` inside the directory, as a `String` tasks can take.
    pub(crate) fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    /// The path of `name` inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory itself, as a `String` tasks can take.
    pub(crate) fn string(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Whether `name` exists in the directory.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// How many files whose name starts with `prefix` exist.
    pub(crate) fn count(&self, prefix: &str) -> usize {
        fs::read_dir(&self.path)
            .expect("scratch dir exists")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            })
            .count()
    }

    /// The ids `n` of the files named `<prefix>-<n>`, sorted.
    pub(crate) fn ids(&self, prefix: &str) -> Vec<u64> {
        let prefix = format!("{prefix}-");
        let mut ids: Vec<u64> = fs::read_dir(&self.path)
            .expect("scratch dir exists")
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth failing a test over.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates an empty file at `path`.
pub(crate) fn touch(path: impl AsRef<Path>) {
    fs::write(path, b"").expect("scratch dir is writable");
}

/// Writes `content` to `path` atomically, so a reader that sees the file sees all of it.
pub(crate) fn publish(path: impl AsRef<Path>, content: &str) {
    let path = path.as_ref();
    let partial = path.with_extension("partial");
    fs::write(&partial, content).expect("scratch dir is writable");
    fs::rename(&partial, path).expect("scratch dir is writable");
}
