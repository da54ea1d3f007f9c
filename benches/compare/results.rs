//! The figures of one report run: who ran what (a [`Peer`] in a scenario), one sample per run,
//! and how a set of samples reads (median, min–max) in the unit of its scenario.

use std::collections::BTreeMap;

/// Who ran a figure: `parallel` on one of its backends, or a peer. The main table's columns are
/// [`Peer::COLUMNS`], the cluster table's [`Peer::CLUSTER_COLUMNS`]; the last two are the
/// `Environment` table's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Peer {
    Thread,
    Process,
    Rayon,
    StdThread,
    Procspawn,
    RawPipe,
    RawSocketpair,
    PyExecutor,
    PyPool,
    Cluster,
    NatsJetStream,
    NatsCore,
    Environment,
    HashMapFloor,
}

impl Peer {
    /// The main table's columns, in order.
    pub(crate) const COLUMNS: [Peer; 9] = [
        Peer::Thread,
        Peer::Process,
        Peer::Rayon,
        Peer::StdThread,
        Peer::Procspawn,
        Peer::RawPipe,
        Peer::RawSocketpair,
        Peer::PyExecutor,
        Peer::PyPool,
    ];

    /// The cluster table's columns, in order: ours, then the raw async-nats peers.
    pub(crate) const CLUSTER_COLUMNS: [Peer; 3] =
        [Peer::Cluster, Peer::NatsJetStream, Peer::NatsCore];

    /// The peers of the process backend that are process pools (as opposed to physical limits).
    pub(crate) const PROCESS_POOLS: [Peer; 3] = [Peer::Procspawn, Peer::PyExecutor, Peer::PyPool];

    /// The physical limits of moving a message between two processes.
    pub(crate) const LIMITS: [Peer; 2] = [Peer::RawPipe, Peer::RawSocketpair];

    /// The column heading.
    pub(crate) fn heading(self) -> &'static str {
        match self {
            Peer::Thread => "`parallel` thread",
            Peer::Process => "`parallel` process",
            Peer::Rayon => "rayon `spawn` + channel",
            Peer::StdThread => "`std::thread::spawn` per task",
            Peer::Procspawn => "procspawn `Pool`",
            Peer::RawPipe => "raw pipe (limit)",
            Peer::RawSocketpair => "raw socketpair (limit)",
            Peer::PyExecutor => "Python `ProcessPoolExecutor`",
            Peer::PyPool => "Python `multiprocessing.Pool`",
            Peer::Cluster => "`parallel` cluster",
            Peer::NatsJetStream => "raw async-nats JetStream (limit)",
            Peer::NatsCore => "raw async-nats core request/reply",
            Peer::Environment => "`Environment`",
            Peer::HashMapFloor => "`HashMap<String, Box<dyn Any>>`",
        }
    }

    /// The short name used in the ratio column and the plot's legend.
    pub(crate) fn short(self) -> &'static str {
        match self {
            Peer::Thread => "thread",
            Peer::Process => "process",
            Peer::Rayon => "rayon",
            Peer::StdThread => "std::thread",
            Peer::Procspawn => "procspawn",
            Peer::RawPipe => "pipe",
            Peer::RawSocketpair => "socketpair",
            Peer::PyExecutor => "ProcessPoolExecutor",
            Peer::PyPool => "multiprocessing.Pool",
            Peer::Cluster => "cluster",
            Peer::NatsJetStream => "JetStream",
            Peer::NatsCore => "core request",
            Peer::Environment => "Environment",
            Peer::HashMapFloor => "HashMap",
        }
    }

    /// The peer a key of `benches/python_peers.py`'s output stands for.
    pub(crate) fn from_python(key: &str) -> Option<Peer> {
        match key {
            "executor" => Some(Peer::PyExecutor),
            "pool" => Some(Peer::PyPool),
            _ => None,
        }
    }
}

/// How a scenario's samples read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Seconds per operation, shown as a time.
    Time,
    /// Seconds per task, shown as tasks per second.
    Rate,
    /// A factor (higher is better), shown as is.
    Factor,
}

/// The samples of one scenario and peer, one per run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Samples(Vec<f64>);

impl Samples {
    pub(crate) fn new(samples: Vec<f64>) -> Samples {
        Samples(samples)
    }

    pub(crate) fn values(&self) -> &[f64] {
        &self.0
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The median (the mean of the middle two for an even count).
    pub(crate) fn median(&self) -> f64 {
        let sorted = self.sorted();
        let middle = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        }
    }

    pub(crate) fn min(&self) -> f64 {
        self.sorted()[0]
    }

    pub(crate) fn max(&self) -> f64 {
        self.sorted()[self.0.len() - 1]
    }

    /// `median (min–max)` in `unit`; a rate's spread runs from the slowest run to the fastest.
    pub(crate) fn show(&self, unit: Unit) -> String {
        let (median, low, high) = match unit {
            Unit::Rate => (1.0 / self.median(), 1.0 / self.max(), 1.0 / self.min()),
            Unit::Time | Unit::Factor => (self.median(), self.min(), self.max()),
        };
        let (scale, suffix) = match unit {
            Unit::Time => time_scale(median),
            Unit::Rate => rate_scale(median),
            Unit::Factor => (1.0, "×"),
        };
        if self.0.len() == 1 {
            return format!("{}{suffix}", significant(median * scale));
        }
        format!(
            "{}{suffix} ({}–{})",
            significant(median * scale),
            significant(low * scale),
            significant(high * scale)
        )
    }
}

/// The factor and suffix that show `seconds` in ns, µs, ms or s.
fn time_scale(seconds: f64) -> (f64, &'static str) {
    if seconds < 1e-6 {
        (1e9, " ns")
    } else if seconds < 1e-3 {
        (1e6, " µs")
    } else if seconds < 1.0 {
        (1e3, " ms")
    } else {
        (1.0, " s")
    }
}

/// The factor and suffix that show a rate in tasks/s, k/s or M/s.
fn rate_scale(per_second: f64) -> (f64, &'static str) {
    if per_second >= 1e6 {
        (1e-6, " M/s")
    } else if per_second >= 1e3 {
        (1e-3, " k/s")
    } else {
        (1.0, " /s")
    }
}

/// Three significant digits, no more decimals than that takes.
pub(crate) fn significant(value: f64) -> String {
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}")
}

/// Every figure of a run, by scenario key and peer.
#[derive(Debug, Default)]
pub(crate) struct Results {
    figures: BTreeMap<(String, Peer), Samples>,
}

impl Results {
    /// Adds one run's sample.
    pub(crate) fn push(&mut self, scenario: &str, peer: Peer, sample: f64) {
        self.figures.entry((scenario.to_owned(), peer)).or_default().0.push(sample);
    }

    /// Adds all the samples of a scenario and peer at once (Python's).
    pub(crate) fn insert(&mut self, scenario: &str, peer: Peer, samples: Samples) {
        self.figures.insert((scenario.to_owned(), peer), samples);
    }

    pub(crate) fn get(&self, scenario: &str, peer: Peer) -> Option<&Samples> {
        self.figures.get(&(scenario.to_owned(), peer)).filter(|samples| !samples.0.is_empty())
    }

    /// Whether any scenario has a figure of `peer`.
    pub(crate) fn has_peer(&self, peer: Peer) -> bool {
        self.figures.keys().any(|(_, p)| *p == peer)
    }
}
