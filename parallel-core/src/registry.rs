//! The registry: a link-time table from task name to an erased runner.
//!
//! Every `#[task]` adds one [`Registration`] to the [`TASKS`] distributed slice. The linker
//! gathers the slice, so the table is complete before `main` runs, in every crate of the program
//! and under any LTO setting; a worker process looks tasks up here by name before the user's
//! `main` could have registered anything by hand.

use std::any::type_name;
use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::{Arc, OnceLock};

use linkme::distributed_slice;

use crate::progress::{self, Outbox, Progress};
use crate::value::Wire;
use crate::wire_value::{self, Encode};
use crate::{Environment, Error, Task};

/// Every task of the program, gathered by the linker.
#[distributed_slice]
pub static TASKS: [Registration];

/// One task in the registry: its name, its Rust type and how to run it from serialized input.
///
/// Built only by `#[task]` through [`Registration::of`].
#[derive(Debug)]
pub struct Registration {
    name: &'static str,
    type_name: fn() -> &'static str,
    // Read by the cluster backend, which routes tasks by it.
    #[cfg_attr(not(any(test, feature = "cluster")), allow(dead_code))]
    fingerprint: fn() -> u64,
    // Read by the worker loop of the process backend, which looks tasks up by name.
    #[cfg_attr(not(any(test, process_backend)), allow(dead_code))]
    runner: Runner,
}

/// Runs a task from its arguments as the wire writes them ([`crate::wire_value`]) and hands back
/// its outcome, with the task's type erased.
///
/// The input is bytes rather than a type-erased deserializer: each task's `Deserialize` is then
/// instantiated for the one deserializer the rest of the crate uses already (the retries' copy,
/// the cluster's), not again behind `erased_serde`'s visitor shims, which cost every test binary
/// and every user's build a few hundred functions per task.
pub(crate) type Runner = fn(&mut Environment, &[u8], Option<Arc<dyn Outbox>>) -> Outcome;

/// What an erased run produced; the caller serializes whichever value it holds.
#[cfg_attr(not(any(test, process_backend)), allow(dead_code))] // built for the process backend's worker loop
pub(crate) enum Outcome {
    /// The task returned `Ok`; the value is its output.
    Output(Box<dyn Encode + Send>),
    /// The task returned `Err`; the value is its error.
    Failed(Box<dyn Encode + Send>),
    /// The input did not deserialize as the task's arguments.
    BadInput(String),
}

impl Registration {
    /// The registration of task type `T`.
    pub const fn of<T: Task>() -> Self {
        Registration {
            name: T::NAME,
            type_name: type_name::<T>,
            fingerprint: fingerprint_of::<T>,
            runner: run_erased::<T>,
        }
    }

    /// The name the task is registered under.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Rust type that implements the task.
    pub(crate) fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    /// The fingerprint of the task's name, signature and types: two builds agree on it when they
    /// name the task the same and give it the same argument, output, error and progress types.
    #[cfg_attr(not(any(test, feature = "cluster")), allow(dead_code))]
    pub(crate) fn fingerprint(&self) -> u64 {
        (self.fingerprint)()
    }

    /// Deserializes the task from `input` (the wire's bytes of its arguments), runs it with `env`
    /// and returns what it produced; its progress messages go to `progress` (nowhere without one).
    #[cfg_attr(not(any(test, process_backend)), allow(dead_code))] // called by the process backend's worker loop
    pub(crate) fn run(
        &self,
        env: &mut Environment,
        input: &[u8],
        progress: Option<Arc<dyn Outbox>>,
    ) -> Outcome {
        (self.runner)(env, input, progress)
    }
}

/// The fingerprint of task `T`: FNV-1a over its name, its signature as `#[task]` wrote it
/// (without spaces) and the names of its Rust types. Stable from build to build and machine to
/// machine, unlike `std`'s `DefaultHasher`, whose algorithm may change.
pub(crate) fn fingerprint_of<T: Task>() -> u64 {
    let signature: String = T::SIGNATURE.split_whitespace().collect();
    let parts = [
        T::NAME,
        &signature,
        type_name::<T>(),
        type_name::<T::Output>(),
        type_name::<T::Error>(),
        type_name::<T::Progress>(),
    ];
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        // Each part ends with a byte no UTF-8 text holds, so that parts cannot run together.
        for &byte in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn run_erased<T: Task>(
    env: &mut Environment,
    input: &[u8],
    progress: Option<Arc<dyn Outbox>>,
) -> Outcome {
    let progress = progress.map_or_else(Progress::<T::Progress>::detached, Progress::remote);
    // Bytes after the task are not looked at, as before: the frame holds the task alone.
    match <T as serde::Deserialize<'_>>::deserialize(&mut wire_value::Deserializer::new(input)) {
        Ok(task) => match progress::scope(progress, || task.run(env)) {
            Ok(output) => Outcome::Output(Box::new(Wire(output))),
            Err(error) => Outcome::Failed(Box::new(Wire(error))),
        },
        Err(error) => Outcome::BadInput(error.to_string()),
    }
}

/// The table built once from [`TASKS`], or the first duplicate name found in it.
struct Table {
    by_name: BTreeMap<&'static str, &'static Registration>,
    duplicate: Option<(&'static Registration, &'static Registration)>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut by_name = BTreeMap::new();
        let mut duplicate = None;
        for registration in TASKS.iter() {
            match by_name.entry(registration.name) {
                Entry::Vacant(slot) => {
                    slot.insert(registration);
                }
                Entry::Occupied(first) => {
                    duplicate.get_or_insert((*first.get(), registration));
                }
            }
        }
        Table { by_name, duplicate }
    })
}

/// Checks that no two tasks share a name; every pool checks this when it is built.
pub(crate) fn validate() -> Result<(), Error> {
    match table().duplicate {
        None => Ok(()),
        Some((first, second)) => {
            Err(Error::duplicate_task(first.name, first.type_name(), second.type_name()))
        }
    }
}

/// The registration of the task called `name`, if the program has one.
#[cfg_attr(not(any(test, process_backend)), allow(dead_code))] // called by the process backend's worker loop
pub(crate) fn lookup(name: &str) -> Option<&'static Registration> {
    table().by_name.get(name).copied()
}

/// Every registered task, by name.
#[cfg(feature = "cluster")]
pub(crate) fn all() -> impl Iterator<Item = &'static Registration> {
    table().by_name.values().copied()
}

/// Feeds every registered task's name and Rust type to `hasher`: a worker of another build of
/// the program hashes differently.
#[cfg(process_backend)]
pub(crate) fn fingerprint(hasher: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    for (name, registration) in &table().by_name {
        (name, registration.type_name()).hash(hasher);
    }
}

/// The names of every task registered in this program, sorted.
///
/// The list is complete before `main` runs: it comes from a table the linker builds, including
/// tasks defined in dependency crates.
///
/// # Examples
///
/// ```
/// #[parallel::task]
/// fn greet(name: String) -> String {
///     format!("hello, {name}")
/// }
///
/// fn main() {
///     assert!(parallel::registered_tasks().iter().any(|name| name.ends_with("::greet")));
/// }
/// ```
pub fn registered_tasks() -> Vec<&'static str> {
    table().by_name.keys().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Shout {
        text: String,
    }

    impl Task for Shout {
        type Output = String;
        type Error = String;
        type Progress = crate::Never;
        const NAME: &'static str = "registry::tests::shout";

        fn run(self, env: &mut Environment) -> Result<String, String> {
            if self.text.is_empty() {
                return Err("nothing to shout".to_owned());
            }
            let calls = env.get_or_insert_with("calls", || 0u32);
            *calls += 1;
            Ok(format!("{}! ({})", self.text.to_uppercase(), calls))
        }
    }

    // linkme places the entry with `link_section`, which `unsafe_code` counts; it is the same
    // registration `#[task]` writes in users' crates.
    #[allow(unsafe_code)]
    #[distributed_slice(TASKS)]
    static SHOUT: Registration = Registration::of::<Shout>();

    /// Runs task `name` from `input`, a JSON text written on the wire as the caller would.
    fn run_json(env: &mut Environment, name: &str, input: &str) -> (&'static str, String) {
        let registration = lookup(name).expect("the test registers this task");
        let value: serde_json::Value = serde_json::from_str(input).unwrap();
        let mut bytes = Vec::new();
        wire_value::encode(&value, &mut bytes, usize::MAX).unwrap();
        // What the worker writes, read back as JSON.
        let json = |value: Box<dyn Encode + Send>| {
            let mut out = Vec::new();
            value.encode(&mut out, usize::MAX).unwrap();
            wire_value::decode::<serde_json::Value>(&out).unwrap().to_string()
        };
        match registration.run(env, &bytes, None) {
            Outcome::Output(value) => ("output", json(value)),
            Outcome::Failed(value) => ("failed", json(value)),
            Outcome::BadInput(message) => ("bad input", message),
        }
    }

    #[test]
    fn runs_a_registered_task_by_name_from_serialized_input() {
        let mut env = Environment::new();
        assert_eq!(
            run_json(&mut env, Shout::NAME, r#"{"text":"hi"}"#),
            ("output", r#""HI! (1)""#.to_owned())
        );
        // the environment persists between runs
        assert_eq!(
            run_json(&mut env, Shout::NAME, r#"{"text":"yo"}"#),
            ("output", r#""YO! (2)""#.to_owned())
        );
        assert_eq!(
            run_json(&mut env, Shout::NAME, r#"{"text":""}"#),
            ("failed", r#""nothing to shout""#.to_owned())
        );
    }

    #[test]
    fn bad_input_is_reported_not_panicked() {
        let (kind, message) = run_json(&mut Environment::new(), Shout::NAME, r#"{"txt":1}"#);
        assert_eq!(kind, "bad input");
        assert!(message.contains("text"), "{message}");
    }

    #[test]
    fn fingerprints_tell_signatures_apart_and_are_stable() {
        #[derive(Serialize, Deserialize)]
        struct Wider {
            text: String,
        }
        impl Task for Wider {
            type Output = String;
            type Error = String;
            type Progress = crate::Never;
            const NAME: &'static str = "registry::tests::shout";
            const SIGNATURE: &'static str = "fn(text: String) -> Result<String, String>";

            fn run(self, _: &mut Environment) -> Result<String, String> {
                Ok(self.text)
            }
        }
        let shout = fingerprint_of::<Shout>();
        assert_eq!(shout, fingerprint_of::<Shout>());
        assert_eq!(lookup(Shout::NAME).unwrap().fingerprint(), shout);
        // Same name, another signature and type.
        assert_ne!(fingerprint_of::<Wider>(), shout);
    }

    #[test]
    fn lists_and_finds_registrations() {
        assert!(registered_tasks().contains(&Shout::NAME));
        assert_eq!(lookup(Shout::NAME).unwrap().type_name(), type_name::<Shout>());
        assert!(lookup("no::such::task").is_none());
        assert!(validate().is_ok());
    }
}
