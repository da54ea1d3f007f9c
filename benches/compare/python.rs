//! Python's process pools as peers: runs `benches/python_peers.py` and reads the JSON it prints
//! into the run's [`Results`].

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::results::{Peer, Results, Samples};

/// What `benches/python_peers.py` prints.
#[derive(Debug, Deserialize)]
struct Output {
    python: String,
    start_method: String,
    counts: BTreeMap<String, u64>,
    results: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
}

/// What the report says about the Python that ran, or why none did.
#[derive(Debug)]
pub(crate) struct Python {
    /// The interpreter and its start method, or the reason Python was skipped.
    pub(crate) description: String,
    /// Tasks or iterations per sample, by scenario.
    pub(crate) counts: BTreeMap<String, u64>,
}

/// Runs the Python peers with `runs` samples per figure and adds their figures to `results`.
/// Without `python3` on the `PATH`, or if the script fails, the report goes on without them and
/// says why.
pub(crate) fn run(script: &Path, runs: usize, is_quick: bool, results: &mut Results) -> Python {
    let skipped = |why: String| {
        eprintln!("compare: Python peers skipped: {why}");
        Python { description: format!("none ({why})"), counts: BTreeMap::new() }
    };
    let mut command = Command::new("python3");
    command.arg(script).arg("--runs").arg(runs.to_string());
    if is_quick {
        command.arg("--quick");
    }
    let output = match command.stderr(Stdio::inherit()).output() {
        Ok(output) => output,
        Err(error) => return skipped(format!("cannot run python3: {error}")),
    };
    if !output.status.success() {
        return skipped(format!("{} exited with {}", script.display(), output.status));
    }
    let parsed: Output = match serde_json::from_slice(&output.stdout) {
        Ok(parsed) => parsed,
        Err(error) => return skipped(format!("its output is not the expected JSON: {error}")),
    };
    for (scenario, peers) in parsed.results {
        for (key, samples) in peers {
            match Peer::from_python(&key) {
                Some(peer) => results.insert(&scenario, peer, Samples::new(samples)),
                None => eprintln!("compare: unknown Python peer {key:?} ignored"),
            }
        }
    }
    Python {
        description: format!("Python {} (start method `{}`)", parsed.python, parsed.start_method),
        counts: parsed.counts,
    }
}
