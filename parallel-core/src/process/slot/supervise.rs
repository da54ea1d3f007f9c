//! The decisions of supervision, apart from the threads and processes they concern: what becomes
//! of each job in flight when its worker dies, and how starting a worker backs off after failures.
//! Each is a unit test below, with real claims and no process.

use std::time::Duration;

use crate::process::claim::{self, Claim, Claims};

/// How many worker deaths a job may see while it waits, not started, in a worker that was running
/// nothing else, before it is reported as the cause (a frame the worker could not take in, say).
pub(super) const DEATHS_BEFORE_START: u32 = 3;
/// How many times in a row a slot tries to start a worker before it fails the job in hand.
pub(super) const START_ATTEMPTS: u32 = 5;

/// What becomes of a job that was in flight on a worker that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// It was running (or may have been: a claim the pool does not recognize counts as started,
    /// so that nothing runs twice): it resolves as `WorkerDied`.
    Died,
    /// It never started: it goes back to the queue, to run once on another worker.
    Requeue,
    /// It never started, but this is the `DEATHS_BEFORE_START`-th idle worker in a row to die
    /// with it: it is reported as `WorkerDied` rather than sent on forever.
    DiedBeforeStart,
}

/// A job in flight, as supervision sees it: its number on the worker and the deaths of idle
/// workers it has been through.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    pub(super) seq: u64,
    pub(super) deaths: u32,
}

/// Decides the fate of each job in flight on a dead worker, in order, from its claim (read after
/// the worker was reaped, when nothing moves them any more); returns each fate with the job's
/// count of idle deaths after this one.
pub(super) fn settle(claims: &Claims, in_flight: &[InFlight]) -> Vec<(Fate, u32)> {
    let is_started = |job: &InFlight| {
        !matches!(
            claim::read(claim::slot(claims, job.seq), job.seq),
            Claim::Pending | Claim::Cancelled
        )
    };
    let was_running = in_flight.iter().any(is_started);
    in_flight
        .iter()
        .map(|job| {
            if is_started(job) {
                return (Fate::Died, job.deaths);
            }
            // Jobs behind a running one are innocent of its death; a worker that dies running
            // nothing may have died of taking in one of them.
            if was_running {
                return (Fate::Requeue, job.deaths);
            }
            let deaths = job.deaths + 1;
            let fate =
                if deaths >= DEATHS_BEFORE_START { Fate::DiedBeforeStart } else { Fate::Requeue };
            (fate, deaths)
        })
        .collect()
}

/// Starting a worker: failures in a row, and what to do after each.
#[derive(Debug, Default)]
pub(super) struct StartBackoff {
    failures: u32,
}

impl StartBackoff {
    /// A worker started: the next failure starts the count afresh.
    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A start failed: how long to wait before the next try (20 ms doubling to 2.56 s), and
    /// whether to fail the job in hand now (every [`START_ATTEMPTS`]-th failure in a row, so a
    /// broken setup is reported, never retried in silence).
    pub(super) fn failed(&mut self) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(10 << self.failures.min(8));
        (delay, self.failures % START_ATTEMPTS == 0)
    }

    /// Failures in a row so far.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn claims() -> Claims {
        std::array::from_fn(|_| AtomicU64::new(0))
    }

    /// Jobs 1..=n published, as the pool does before writing their frames.
    fn sent(claims: &Claims, n: u64) -> Vec<InFlight> {
        (1..=n)
            .map(|seq| {
                claim::publish(claim::slot(claims, seq), seq);
                InFlight { seq, deaths: 0 }
            })
            .collect()
    }

    fn fates(settled: &[(Fate, u32)]) -> Vec<Fate> {
        settled.iter().map(|(fate, _)| *fate).collect()
    }

    #[test]
    fn the_running_job_dies_and_the_ones_behind_it_run_elsewhere() {
        let claims = claims();
        let jobs = sent(&claims, 4);
        assert_eq!(claim::start(claim::slot(&claims, 1), 1), Ok(true));
        let settled = settle(&claims, &jobs);
        assert_eq!(fates(&settled), [Fate::Died, Fate::Requeue, Fate::Requeue, Fate::Requeue]);
        assert!(settled.iter().all(|(_, deaths)| *deaths == 0), "innocent jobs are not counted");
    }

    #[test]
    fn a_worker_that_dies_idle_fails_nobody() {
        let claims = claims();
        let jobs = sent(&claims, 2);
        let settled = settle(&claims, &jobs);
        assert_eq!(settled, [(Fate::Requeue, 1), (Fate::Requeue, 1)]);
    }

    #[test]
    fn a_job_that_kills_idle_workers_is_reported_after_three() {
        let claims = claims();
        let mut jobs = sent(&claims, 1);
        for round in 1..DEATHS_BEFORE_START {
            let settled = settle(&claims, &jobs);
            assert_eq!(settled, [(Fate::Requeue, round)]);
            jobs[0].deaths = settled[0].1;
        }
        assert_eq!(fates(&settle(&claims, &jobs)), [Fate::DiedBeforeStart]);
    }

    #[test]
    fn a_job_cancelled_before_it_started_is_not_blamed() {
        let claims = claims();
        let jobs = sent(&claims, 3);
        assert_eq!(claim::start(claim::slot(&claims, 1), 1), Ok(true));
        assert!(claim::take_back(claim::slot(&claims, 2), 2));
        let settled = settle(&claims, &jobs);
        assert_eq!(fates(&settled), [Fate::Died, Fate::Requeue, Fate::Requeue]);
    }

    #[test]
    fn a_job_killed_by_its_cancel_and_a_finished_one_without_a_reply_count_as_run() {
        let claims = claims();
        let jobs = sent(&claims, 3);
        for seq in [1, 2] {
            assert_eq!(claim::start(claim::slot(&claims, seq), seq), Ok(true));
        }
        assert!(claim::finish(claim::slot(&claims, 1), 1));
        assert_eq!(claim::stop(claim::slot(&claims, 2), 2, true), claim::Stopped::MustKill);
        let settled = settle(&claims, &jobs);
        assert_eq!(fates(&settled), [Fate::Died, Fate::Died, Fate::Requeue], "never run twice");
    }

    #[test]
    fn garbage_in_a_claim_never_makes_a_job_run_twice() {
        let claims = claims();
        let jobs = sent(&claims, 2);
        claim::slot(&claims, 2).store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(fates(&settle(&claims, &jobs)), [Fate::Requeue, Fate::Died]);
    }

    #[test]
    fn starting_backs_off_and_reports_every_fifth_failure() {
        let mut backoff = StartBackoff::default();
        let mut delays = Vec::new();
        let mut reports = Vec::new();
        for attempt in 1..=12 {
            let (delay, report) = backoff.failed();
            delays.push(delay.as_millis());
            if report {
                reports.push(attempt);
            }
        }
        assert_eq!(delays, [20, 40, 80, 160, 320, 640, 1280, 2560, 2560, 2560, 2560, 2560]);
        assert_eq!(reports, [5, 10]);
        assert_eq!(backoff.failures(), 12);
        backoff.succeeded();
        assert_eq!(backoff.failed(), (Duration::from_millis(20), false), "afresh after a start");
    }
}
