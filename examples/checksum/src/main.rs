//! Hashes every regular file under a directory with SHA-256, one task per file — the main job of
//! `parallel` — on worker processes, then the same files on threads beside it.
//!
//! Each worker keeps one 1 MiB read buffer in its [`Environment`] and reads every file it is
//! given through it, in chunks: the summary counts the buffers that were allocated, which is at
//! most the number of workers however many files there are. Results stream back in input order
//! through [`Pool::map`]; an unreadable file is reported with its typed error and counted, and
//! the run goes on.
//!
//! ```text
//! cargo run --release -p checksum                           # this repository, both backends
//! cargo run --release -p checksum -- /usr/lib --backend process --workers 4
//! cargo run --release -p checksum -- --list --backend thread  # sha256sum-style lines on stdout
//! ```
//!
//! Without a directory it hashes the repository it was built from, skipping `target/` and
//! `.git/`. Without `--backend` it runs the process backend and then the thread backend on the
//! same files and prints a line for each (the second run may find the files in the page cache
//! the first one filled). The worker count defaults to the pools' (`PARALLEL_WORKERS`, else the
//! available parallelism). It exits with status 1 when a file could not be hashed.

use std::fs::File;
use std::io::{ErrorKind, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use parallel::{task, Backend, Environment, Pool, TaskError};
use sha2::{Digest, Sha256};

/// The key of the worker's read buffer in its [`Environment`].
const BUFFER_KEY: &str = "checksum::buffer";
/// The size of the worker's read buffer.
const BUFFER_SIZE: usize = 1 << 20;
/// Directories never descended into: build output and version control.
const SKIPPED_DIRECTORIES: [&str; 2] = ["target", ".git"];

/// What hashing one file found.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Checksum {
    /// The file's path, as it was given to the task.
    path: String,
    /// The number of bytes read.
    size: u64,
    /// The SHA-256 digest, in lowercase hexadecimal.
    digest: String,
    /// Whether this task had to allocate its worker's read buffer (the first task on a worker).
    allocated_buffer: bool,
}

/// Why a file could not be hashed: the task's own error, which comes back typed in
/// [`TaskError::Failed`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Unreadable {
    /// What went wrong, with the path.
    message: String,
    /// Whether this task allocated its worker's read buffer before it failed.
    allocated_buffer: bool,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Hashes the file at `path`, reading it in chunks through the worker's reusable buffer.
#[task]
fn hash_file(env: &mut Environment, path: String) -> Result<Checksum, Unreadable> {
    let mut file = File::open(&path).map_err(|error| Unreadable {
        message: format!("cannot open {path}: {error}"),
        allocated_buffer: false,
    })?;
    // `exists` tells whether `get_or_insert_with` is about to allocate.
    let allocated_buffer = !env.exists(BUFFER_KEY);
    let buffer = env.get_or_insert_with(BUFFER_KEY, || vec![0u8; BUFFER_SIZE]);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match file.read(buffer) {
            Ok(0) => break,
            Ok(read) => {
                hasher.update(&buffer[..read]);
                size += read as u64;
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                let message = format!("cannot read {path}: {error}");
                return Err(Unreadable { message, allocated_buffer });
            }
        }
    }
    Ok(Checksum { path, size, digest: format!("{:x}", hasher.finalize()), allocated_buffer })
}

/// The command line: `[DIRECTORY] [--backend thread|process] [--workers N] [--list]`.
#[derive(Debug)]
struct Options {
    /// The directory to hash.
    root: PathBuf,
    /// The backends to run, in order: the one asked for, or the process backend and then the
    /// thread backend.
    backends: Vec<Backend>,
    /// The worker count asked for, if any.
    workers: Option<usize>,
    /// Whether to print a `sha256sum`-style line per file.
    is_listing: bool,
}

impl Options {
    /// Parses the arguments after the program name.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            // This package is `examples/checksum/` of the repository.
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
            backends: vec![Backend::Process, Backend::Thread],
            workers: None,
            is_listing: false,
        };
        let mut has_root = false;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--backend" => {
                    options.backends = vec![match args.next().as_deref() {
                        Some("thread") => Backend::Thread,
                        Some("process") => Backend::Process,
                        other => {
                            return Err(format!("--backend takes thread or process, not {other:?}"))
                        }
                    }];
                }
                "--workers" => {
                    let value = args.next().unwrap_or_default();
                    let workers = value
                        .parse()
                        .map_err(|_| format!("--workers takes a number, not {value:?}"))?;
                    options.workers = Some(workers);
                }
                "--list" => options.is_listing = true,
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                directory if !has_root => {
                    options.root = PathBuf::from(directory);
                    has_root = true;
                }
                extra => return Err(format!("one directory only; what is {extra:?}?")),
            }
        }
        Ok(options)
    }
}

/// Collects the regular files under `root` (symbolic links are not followed), sorted, and
/// reports the directories that could not be read to `problems`.
fn regular_files(root: &Path, problems: &mut Vec<String>) -> Vec<String> {
    let mut files = Vec::new();
    let mut directories = vec![root.to_path_buf()];
    while let Some(directory) = directories.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(format!("cannot list {}: {error}", directory.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    problems.push(format!("cannot list {}: {error}", directory.display()));
                    continue;
                }
            };
            let Ok(file_type) = entry.file_type() else { continue };
            let path = entry.path();
            if file_type.is_dir() {
                let is_skipped = SKIPPED_DIRECTORIES.iter().any(|name| entry.file_name() == *name);
                if !is_skipped {
                    directories.push(path);
                }
            } else if file_type.is_file() {
                files.push(path.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// A progress line on stderr, `hashed/total files`, shown only when stderr is a terminal and
/// redrawn at most every [`Progress::PERIOD`].
struct Progress {
    total: usize,
    done: usize,
    is_shown: bool,
    drawn_at: Option<Instant>,
}

impl Progress {
    /// How often the line is redrawn.
    const PERIOD: Duration = Duration::from_millis(100);

    fn new(total: usize) -> Progress {
        Progress { total, done: 0, is_shown: std::io::stderr().is_terminal(), drawn_at: None }
    }

    /// Counts one more file done.
    fn inc(&mut self) {
        self.done += 1;
        let is_due = self.drawn_at.is_none_or(|drawn_at| drawn_at.elapsed() >= Self::PERIOD);
        if self.is_shown && is_due {
            eprint!("\r{}/{} files", self.done, self.total);
            self.drawn_at = Some(Instant::now());
        }
    }

    /// Erases the line, before a line of the listing or the summary; the next `inc` redraws it.
    fn clear(&mut self) {
        if self.drawn_at.take().is_some() {
            // Carriage return, then erase the line (ANSI "erase in line").
            eprint!("\r\x1b[2K");
        }
    }
}

/// What one run over the files found.
struct Run {
    /// The files hashed.
    hashed: u64,
    /// The bytes they held.
    bytes: u64,
    /// The read buffers the workers allocated.
    buffers: usize,
    /// The files that could not be hashed, with why.
    problems: Vec<String>,
    /// The run's wall-clock time, from building the pool to the last result.
    seconds: f64,
}

/// Hashes `files` on a pool of `backend` (with `workers`, or the pool's default count), printing
/// a `sha256sum`-style line per file when `is_listing`.
fn run(
    backend: Backend,
    workers: Option<usize>,
    files: &[String],
    mut is_listing: bool,
) -> Result<(Pool, Run), String> {
    let started = Instant::now();
    let mut builder = Pool::builder().backend(backend);
    if let Some(workers) = workers {
        builder = builder.workers(workers);
    }
    let pool = builder.build().map_err(|error| format!("cannot build the pool: {error}"))?;
    let mut progress = Progress::new(files.len());

    let mut run = Run { hashed: 0, bytes: 0, buffers: 0, problems: Vec::new(), seconds: 0.0 };
    let mut stdout = std::io::stdout();
    let tasks = files.iter().map(|path| hash_file::new(path.clone()));
    for (path, result) in files.iter().zip(pool.map(tasks)) {
        match result {
            Ok(checksum) => {
                run.hashed += 1;
                run.bytes += checksum.size;
                run.buffers += usize::from(checksum.allocated_buffer);
                if is_listing {
                    let line = format!("{}  {}", checksum.digest, checksum.path);
                    progress.clear();
                    // A reader that went away (`| head`) ends the listing, not the run.
                    is_listing = writeln!(stdout, "{line}").is_ok();
                }
            }
            Err(TaskError::Failed(unreadable)) => {
                run.buffers += usize::from(unreadable.allocated_buffer);
                run.problems.push(unreadable.message);
            }
            Err(other) => run.problems.push(format!("{path}: {other}")),
        }
        progress.inc();
    }
    progress.clear();
    run.seconds = started.elapsed().as_secs_f64();
    Ok((pool, run))
}

/// The backend's name as `--backend` takes it.
fn backend_name(backend: Backend) -> &'static str {
    if backend == Backend::Process {
        "process"
    } else {
        "thread"
    }
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("checksum: {message}");
            eprintln!(
                "usage: checksum [DIRECTORY] [--backend thread|process] [--workers N] [--list]"
            );
            return ExitCode::from(2);
        }
    };
    let root = options.root.canonicalize().unwrap_or_else(|_| options.root.clone());
    let mut listing_problems = Vec::new();
    let files = regular_files(&root, &mut listing_problems);
    for problem in &listing_problems {
        eprintln!("error: {problem}");
    }
    let mut stdout = std::io::stdout();
    // Written like the listing: a closed stdout is not worth a panic.
    let _ = writeln!(stdout, "checksum: {} files under {}", files.len(), root.display());

    let mut is_ok = listing_problems.is_empty();
    for (index, &backend) in options.backends.iter().enumerate() {
        // The listing is the same on every backend: print it once.
        let is_listing = options.is_listing && index == 0;
        let (pool, run) = match run(backend, options.workers, &files, is_listing) {
            Ok(outcome) => outcome,
            Err(message) => {
                eprintln!("checksum: {} backend: {message}", backend_name(backend));
                is_ok = false;
                continue;
            }
        };
        for problem in &run.problems {
            eprintln!("error: {problem}");
        }
        let _ = writeln!(
            stdout,
            "{:>7} backend, {} workers: {} files, {:.1} MB in {:.3} s: {:.0} files/s, {:.1} MB/s; \
             {} read buffer(s) of {} KiB; {} error(s)",
            backend_name(pool.backend()),
            pool.workers(),
            run.hashed,
            run.bytes as f64 / 1e6,
            run.seconds,
            run.hashed as f64 / run.seconds,
            run.bytes as f64 / 1e6 / run.seconds,
            run.buffers,
            BUFFER_SIZE / 1024,
            run.problems.len(),
        );
        if run.buffers > pool.workers() {
            eprintln!("error: more buffers than workers: the Environment did not keep them");
            is_ok = false;
        }
        is_ok &= run.problems.is_empty();
    }
    if is_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
