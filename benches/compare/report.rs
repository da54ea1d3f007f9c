//! The report: the machine it ran on, the main table (every scenario against every peer, with
//! the ratios that count), the cluster table (against raw async-nats, with issue 14's targets),
//! the `Environment` table, and its place in docs/PERFORMANCE.md between [`BEGIN`] and [`END`].

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::results::{significant, Peer, Results, Unit};

/// The marker before the generated section of docs/PERFORMANCE.md.
const BEGIN: &str = "<!-- compare:begin -->";
/// The marker after it.
const END: &str = "<!-- compare:end -->";

/// A row of the main table.
struct Row {
    /// The scenario key its figures are under.
    key: &'static str,
    label: &'static str,
    unit: Unit,
    /// The scenario whose figures stand for ours in the ratios, when this row has none of ours.
    ours_from: Option<&'static str>,
    /// The scenario of ours this row's figures are compared with in place of the peers, and its
    /// name in the ratio cell.
    against: Option<(&'static str, &'static str)>,
}

impl Row {
    const fn new(key: &'static str, label: &'static str, unit: Unit) -> Row {
        Row { key, label, unit, ours_from: None, against: None }
    }
}

const ROWS: [Row; 18] = [
    Row::new("round_trip", "one-at-a-time no-op round trip, 2 workers", Unit::Time),
    Row {
        against: Some(("round_trip", "sync")),
        ..Row::new(
            "round_trip_async",
            "one-at-a-time no-op `async fn` round trip, 2 workers",
            Unit::Time,
        )
    },
    Row::new("bulk_submit", "no-op tasks, submit all then join all, 2 workers", Unit::Rate),
    Row::new("bulk_map", "no-op tasks through `map` (Python: chunksize 1), 2 workers", Unit::Rate),
    Row {
        against: Some(("bulk_map", "idle")),
        ..Row::new(
            "bulk_map_busy",
            "no-op tasks through `map` beside two busy loops, 2 workers",
            Unit::Rate,
        )
    },
    Row {
        against: Some(("bulk_submit", "tasks")),
        ..Row::new("progress", "progress messages of one task, read as they come", Unit::Rate)
    },
    Row {
        ours_from: Some("bulk_map"),
        ..Row::new("bulk_map_chunk100", "no-op tasks, Python `map` with chunksize 100", Unit::Rate)
    },
    Row::new("cpu_1", "100 CPU-bound 1 ms tasks, 1 worker", Unit::Time),
    Row::new("cpu_2", "100 CPU-bound 1 ms tasks, 2 workers", Unit::Time),
    Row::new("speedup", "speedup from 1 to 2 workers (ideal 2×)", Unit::Factor),
    Row::new("random_map", "random-length tasks (1 µs–1 ms) through `map`, 2 workers", Unit::Rate),
    Row::new(
        "random_unordered",
        "random-length tasks through `map_unordered` (Python: `as_completed`, `imap_unordered`), 2 workers",
        Unit::Rate,
    ),
    Row::new("random_first_map", "first result of 200 random-length tasks, `map`", Unit::Time),
    Row::new(
        "random_first_unordered",
        "first result of 200 random-length tasks, `map_unordered`",
        Unit::Time,
    ),
    Row::new("bytes_1k", "`Vec<u8>` argument + result, 1 KiB, 1 worker", Unit::Time),
    Row::new("bytes_1m", "`Vec<u8>` argument + result, 1 MiB, 1 worker", Unit::Time),
    Row::new("bytes_16m", "`Vec<u8>` argument + result, 16 MiB, 1 worker", Unit::Time),
    Row::new("cold_start", "pool build + first result, 1 worker", Unit::Time),
];

/// What issue 14 asks of a cluster row, judged on the median.
#[derive(Clone, Copy)]
enum Target {
    /// At most this factor of a peer's time.
    TimesPeer(Peer, f64),
    /// At least this many operations per second.
    PerSecond(f64),
    /// At most this many seconds.
    Seconds(f64),
}

/// A row of the cluster table.
struct ClusterRow {
    key: &'static str,
    label: &'static str,
    unit: Unit,
    target: Target,
    /// The main table's scenario of the process backend this row is compared with too.
    process: Option<&'static str>,
}

const CLUSTER_ROWS: [ClusterRow; 4] = [
    ClusterRow {
        key: "cluster_round_trip",
        label: "one-at-a-time no-op round trip",
        unit: Unit::Time,
        target: Target::TimesPeer(Peer::NatsJetStream, 1.2),
        process: Some("round_trip"),
    },
    ClusterRow {
        key: "cluster_map",
        label: "no-op tasks through `map` (raw: pulled 100 at a time)",
        unit: Unit::Rate,
        target: Target::PerSecond(20_000.0),
        process: Some("bulk_map"),
    },
    ClusterRow {
        key: "cluster_bytes_16m",
        label: "`Vec<u8>` argument + result, 16 MiB",
        unit: Unit::Time,
        target: Target::Seconds(0.5),
        process: Some("bytes_16m"),
    },
    ClusterRow {
        key: "cluster_failover",
        label: "serving process killed (SIGKILL) mid-task, lease 1 s: until the handle says `WorkerDied`",
        unit: Unit::Time,
        target: Target::Seconds(2.0),
        process: None,
    },
];

const ENVIRONMENT_ROWS: [(&str, &str); 3] = [
    ("env_get", "`get::<u64>` of a present key"),
    ("env_set", "`set` of a present key (a `u64`)"),
    ("env_get_or_insert_with", "`get_or_insert_with` of a present key, then `+= 1`"),
];

/// What the report needs besides the figures.
pub(crate) struct Context<'a> {
    pub(crate) runs: usize,
    pub(crate) python: &'a str,
    pub(crate) command: &'a str,
    /// How each scenario was measured, one line each.
    pub(crate) method: &'a [String],
    /// What the cluster rows ran on, when they ran.
    pub(crate) cluster: Option<&'a str>,
}

/// The generated section: machine, main table, `Environment` table and method.
pub(crate) fn markdown(results: &Results, context: &Context<'_>) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "<!-- Generated by `{}`; edits here are overwritten. -->", context.command);
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", machine(context));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Each cell is the median of {} runs with their min–max. The ratio is our speed over the \
         peer's (the peer's time over ours; above 1 we are faster): the thread backend against \
         raw rayon, the process backend against the physical limit (the faster of the raw pipe \
         and socketpair) and against the fastest process pool.",
        context.runs
    );
    let _ = writeln!(out);
    // A run of one section (`--only`) has the tables of that section only.
    if Peer::COLUMNS.into_iter().any(|peer| results.has_peer(peer)) {
        out.push_str(&main_table(results));
        let _ = writeln!(out);
        let _ = writeln!(out, "![throughput against task size](throughput.svg)");
        let _ = writeln!(out);
    }
    if let Some(setup) = context.cluster {
        out.push_str(&cluster_table(results, setup));
        let _ = writeln!(out);
    }
    if results.has_peer(Peer::Environment) {
        out.push_str(&environment_table(results));
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "How each figure is taken:");
    let _ = writeln!(out);
    for line in context.method {
        let _ = writeln!(out, "- {line}");
    }
    out
}

fn main_table(results: &Results) -> String {
    let columns: Vec<Peer> =
        Peer::COLUMNS.into_iter().filter(|&peer| results.has_peer(peer)).collect();
    let mut out = String::from("| scenario |");
    for peer in &columns {
        let _ = write!(out, " {} |", peer.heading());
    }
    out.push_str(" ratio |\n|---|");
    for _ in &columns {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for row in &ROWS {
        if !columns.iter().any(|&peer| results.get(row.key, peer).is_some()) {
            continue;
        }
        let _ = write!(out, "| {} |", row.label);
        for &peer in &columns {
            let cell = results.get(row.key, peer).map_or("—".to_owned(), |s| s.show(row.unit));
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out, " {} |", ratios(results, row));
    }
    out
}

/// Our speed over the peer's: above 1, ours is faster.
fn speed(ours: f64, peer: f64) -> String {
    format!("{}×", significant(peer / ours))
}

/// The ratio cell of `row`.
fn ratios(results: &Results, row: &Row) -> String {
    let mut parts = Vec::new();
    if row.unit == Unit::Factor {
        for ours in [Peer::Thread, Peer::Process] {
            if let Some(speedup) = results.get(row.key, ours) {
                parts.push(format!(
                    "{} {:.0}% of ideal",
                    ours.short(),
                    speedup.median() / 2.0 * 100.0
                ));
            }
        }
        return parts.join("; ");
    }
    if let Some((against, name)) = row.against {
        for ours in [Peer::Thread, Peer::Process] {
            if let (Some(this), Some(that)) =
                (results.get(row.key, ours), results.get(against, ours))
            {
                parts.push(format!(
                    "{} {} {name}",
                    ours.short(),
                    speed(this.median(), that.median())
                ));
            }
        }
        return parts.join("; ");
    }
    let ours_key = row.ours_from.unwrap_or(row.key);
    let best = |peers: &[Peer]| {
        peers
            .iter()
            .filter_map(|&peer| Some((peer, results.get(row.key, peer)?.median())))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    if let (Some(ours), Some(rayon)) =
        (results.get(ours_key, Peer::Thread), results.get(row.key, Peer::Rayon))
    {
        parts.push(format!("thread {} rayon", speed(ours.median(), rayon.median())));
    }
    if let Some(ours) = results.get(ours_key, Peer::Process) {
        let ours = ours.median();
        let mut against = Vec::new();
        if let Some((peer, time)) = best(&Peer::LIMITS) {
            against.push(format!("{} {}", speed(ours, time), peer.short()));
        }
        if let Some((peer, time)) = best(&Peer::PROCESS_POOLS) {
            against.push(format!("{} {}", speed(ours, time), peer.short()));
        }
        if !against.is_empty() {
            let name = if row.ours_from.is_some() { "process `map`" } else { "process" };
            parts.push(format!("{name} {}", against.join(", ")));
        }
    }
    parts.join("; ")
}

fn cluster_table(results: &Results, setup: &str) -> String {
    let mut out = format!(
        "The cluster backend ({setup}) against raw async-nats on the same server, in the same \
         run. The ratio is our speed over the peer's, as above; the target is issue 14's, judged \
         on the median.\n\n"
    );
    out.push_str("| scenario |");
    for peer in Peer::CLUSTER_COLUMNS {
        let _ = write!(out, " {} |", peer.heading());
    }
    out.push_str(" ratio | target |\n|---|");
    for _ in Peer::CLUSTER_COLUMNS {
        out.push_str("---|");
    }
    out.push_str("---|---|\n");
    for row in &CLUSTER_ROWS {
        let _ = write!(out, "| {} |", row.label);
        for peer in Peer::CLUSTER_COLUMNS {
            let cell = results.get(row.key, peer).map_or("—".to_owned(), |s| s.show(row.unit));
            let _ = write!(out, " {cell} |");
        }
        let ours = results.get(row.key, Peer::Cluster).map(|samples| samples.median());
        let mut against = Vec::new();
        for peer in [Peer::NatsJetStream, Peer::NatsCore] {
            if let (Some(ours), Some(peer_time)) = (ours, results.get(row.key, peer)) {
                against.push(format!("{} {}", speed(ours, peer_time.median()), peer.short()));
            }
        }
        if let (Some(ours), Some(process)) =
            (ours, row.process.and_then(|key| results.get(key, Peer::Process)))
        {
            against.push(format!("{} process backend", speed(ours, process.median())));
        }
        let ratio = if against.is_empty() {
            "—".to_owned()
        } else {
            format!("cluster {}", against.join(", "))
        };
        let _ = writeln!(out, " {ratio} | {} |", target(results, row, ours));
    }
    out
}

/// The target cell: what is asked, and whether the median meets it.
fn target(results: &Results, row: &ClusterRow, ours: Option<f64>) -> String {
    let (asked, is_met) = match row.target {
        Target::TimesPeer(peer, factor) => {
            let peer_time = results.get(row.key, peer).map(|samples| samples.median() * factor);
            (
                format!("≤ {factor}× {}", peer.short()),
                ours.zip(peer_time).map(|(ours, peer_time)| ours <= peer_time),
            )
        }
        Target::PerSecond(rate) => {
            (format!("≥ {}k/s", significant(rate / 1e3)), ours.map(|ours| 1.0 / ours >= rate))
        }
        Target::Seconds(seconds) => {
            (format!("≤ {} s", significant(seconds)), ours.map(|ours| ours <= seconds))
        }
    };
    match is_met {
        Some(true) => format!("{asked}: met"),
        Some(false) => format!("{asked}: **missed**"),
        None => asked,
    }
}

fn environment_table(results: &Results) -> String {
    let mut out = String::from(
        "`Environment` (no peer has one; the floor is a plain map of boxed values, 64 keys, the \
         same operation):\n\n",
    );
    let _ = writeln!(
        out,
        "| operation | {} | {} | ratio to the floor |",
        Peer::Environment.heading(),
        Peer::HashMapFloor.heading()
    );
    out.push_str("|---|---|---|---|\n");
    for (key, label) in ENVIRONMENT_ROWS {
        let ours = results.get(key, Peer::Environment);
        let floor = results.get(key, Peer::HashMapFloor);
        let cell = |samples: Option<&crate::results::Samples>| {
            samples.map_or("—".to_owned(), |s| s.show(Unit::Time))
        };
        let ratio = match (ours, floor) {
            (Some(ours), Some(floor)) => {
                format!("{}× the time", significant(ours.median() / floor.median()))
            }
            _ => "—".to_owned(),
        };
        let _ = writeln!(out, "| {label} | {} | {} | {ratio} |", cell(ours), cell(floor));
    }
    out
}

/// One line on the machine, the toolchains and the date.
fn machine(context: &Context<'_>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "unknown memory".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |text| text.trim().to_owned());
    let rustc = output_of("rustc", &["--version"]).unwrap_or_else(|| "rustc unknown".to_owned());
    let date = output_of("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "unknown".to_owned());
    format!(
        "Machine: {cores} cores ({cpu}), {memory}, Linux {kernel}; {rustc}, release profile; {}; \
         {date}.",
        context.python
    )
}

/// The first line a command prints, if it runs.
fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.lines().next()?.trim().to_owned()).filter(|line| !line.is_empty())
}

/// Replaces what lies between the markers in the file at `path` with `section`.
///
/// # Errors
///
/// When the file cannot be read or written, or lacks the markers.
pub(crate) fn write_into(path: &Path, section: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let (before, rest) = text
        .split_once(BEGIN)
        .ok_or_else(|| format!("{} lacks the marker {BEGIN}", path.display()))?;
    let (_, after) =
        rest.split_once(END).ok_or_else(|| format!("{} lacks the marker {END}", path.display()))?;
    let updated = format!("{before}{BEGIN}\n{section}{END}{after}");
    std::fs::write(path, updated)
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}
