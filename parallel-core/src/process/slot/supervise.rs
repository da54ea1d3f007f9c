//! Supervision of a slot's worker, apart from the threads and processes it concerns: the life of
//! the worker (absent, or serving), starting one with backoff, and when it dies, what becomes of
//! each job it had in flight. It is generic over how workers are spawned ([`Spawn`], [`Child`]),
//! so that every decision is a unit test below with a fake child and real claims.

use std::time::Duration;

use crate::process::child::{Death, StartError};
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
    /// A start failed: how long to wait before the next try (20 ms doubling to 2.56 s), and
    /// whether to fail the job in hand now (every [`START_ATTEMPTS`]-th failure in a row, so a
    /// broken setup is reported, never retried in silence).
    pub(super) fn failed(&mut self) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(10 << self.failures.min(8));
        (delay, self.failures.is_multiple_of(START_ATTEMPTS))
    }

    /// Failures in a row so far.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }
}

/// Why a worker's channel ended, as its reader saw it.
#[derive(Debug)]
pub(super) enum Ended {
    /// End of file: the worker exited or was killed.
    Closed,
    /// The worker sent something the protocol does not allow; it is killed.
    Broke(String),
}

/// A worker process, as supervision needs it.
pub(super) trait Child {
    /// The claims of its jobs, kept after it is reaped.
    type Claims: std::ops::Deref<Target = Claims>;
    fn pid(&self) -> u32;
    /// Kills it if it still runs, waits for it, and says how it ended; hands back the claims of
    /// its jobs, which nothing moves any more.
    fn reap(self) -> (Death, Self::Claims);
    /// Asks it to exit, kills it if it does not in time, and waits for it.
    fn retire(self);
}

/// Starts the worker processes of one slot.
pub(super) trait Spawn {
    type Child: Child;
    fn spawn(&mut self) -> Result<Self::Child, StartError>;
    /// Waits between two attempts to start (a fake records the delay instead).
    fn pause(&mut self, delay: Duration);
}

/// A job in flight on a worker, as supervision settles it.
pub(super) trait Waiting {
    /// Whether its caller has it resolved already (cancelled, timed out): nothing to requeue.
    fn is_finished(&self) -> bool;
    /// Deaths of idle workers it has been through (see [`DEATHS_BEFORE_START`]).
    fn deaths(&self) -> u32;
    fn set_deaths(&mut self, deaths: u32);
}

/// Where a slot's worker is in its life.
enum Life<C> {
    /// None yet, or the last one is gone: the next job starts one, backing off after failures.
    Absent { backoff: StartBackoff },
    /// A worker serves the slot's jobs; `epoch` tells it from the slot's earlier ones.
    Serving { child: C, epoch: u64 },
}

/// A worker that was just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Started {
    pub(super) epoch: u64,
    /// Whether it replaces an earlier worker of the slot (counted in the pool's restarts).
    pub(super) is_restart: bool,
}

/// What became of a dead worker's jobs.
pub(super) struct Burial<J> {
    pub(super) death: Death,
    /// Jobs to resolve as `WorkerDied`, each with the death to report.
    pub(super) died: Vec<(J, Death)>,
    /// Jobs that never started, to run on another worker.
    pub(super) requeued: Vec<J>,
}

/// The supervisor of one slot's worker.
pub(super) struct Supervisor<S: Spawn> {
    spawn: S,
    life: Life<S::Child>,
    /// Workers started so far.
    epochs: u64,
}

impl<S: Spawn> Supervisor<S> {
    pub(super) fn new(spawn: S) -> Self {
        Supervisor { spawn, life: Life::Absent { backoff: StartBackoff::default() }, epochs: 0 }
    }

    /// The serving worker, if any.
    pub(super) fn child(&self) -> Option<&S::Child> {
        match &self.life {
            Life::Serving { child, .. } => Some(child),
            Life::Absent { .. } => None,
        }
    }

    /// Starts a worker, trying again with backoff; after [`START_ATTEMPTS`] failures in a row,
    /// gives up with the reason to fail the job in hand (the next job tries afresh, still backing
    /// off). Does nothing if a worker serves already.
    pub(super) fn start(&mut self) -> Result<Started, String> {
        let backoff = match &mut self.life {
            Life::Serving { epoch, .. } => return Ok(Started { epoch: *epoch, is_restart: false }),
            Life::Absent { backoff } => backoff,
        };
        loop {
            match self.spawn.spawn() {
                Ok(child) => {
                    self.epochs += 1;
                    let epoch = self.epochs;
                    self.life = Life::Serving { child, epoch };
                    return Ok(Started { epoch, is_restart: epoch > 1 });
                }
                Err(error) => {
                    let (delay, must_report) = backoff.failed();
                    tracing::warn!(attempt = backoff.failures(), error = %error.message, "could not start a worker process");
                    self.spawn.pause(delay);
                    if must_report {
                        return Err(start_failure(&error));
                    }
                }
            }
        }
    }

    /// The worker's channel ended: reaps it (so that no claim moves any more), then settles its
    /// jobs in flight, in the order sent, with their numbers on it, by their claims.
    pub(super) fn bury<J: Waiting>(
        &mut self,
        ended: Ended,
        in_flight: Vec<(u64, J)>,
        max_memory: Option<u64>,
    ) -> Option<Burial<J>> {
        let Life::Serving { child, .. } =
            std::mem::replace(&mut self.life, Life::Absent { backoff: StartBackoff::default() })
        else {
            return None;
        };
        let jobs: Vec<InFlight> = in_flight
            .iter()
            .map(|(seq, job)| InFlight { seq: *seq, deaths: job.deaths() })
            .collect();
        // Reaped first: a dead worker moves no claim any more. The claims outlive it, in the
        // pool's mapping, which the child hands over with its death.
        let (mut death, claims) = child.reap();
        explain(&mut death, &ended, max_memory);
        let settled = settle(&claims, &jobs);
        let mut burial = Burial { death, died: Vec::new(), requeued: Vec::new() };
        for ((_, mut job), (fate, deaths)) in in_flight.into_iter().zip(settled) {
            job.set_deaths(deaths);
            match fate {
                Fate::Died => burial.died.push((job, burial.death.clone())),
                Fate::DiedBeforeStart => {
                    let mut death = burial.death.clone();
                    death.reason = format!(
                        "{}; its worker died before starting it {deaths} times in a row",
                        death.reason
                    );
                    burial.died.push((job, death));
                }
                Fate::Requeue if job.is_finished() => {}
                Fate::Requeue => burial.requeued.push(job),
            }
        }
        Some(burial)
    }

    /// Asks the serving worker, if any, to exit (it has run its share, or the pool stops).
    pub(super) fn retire(&mut self) {
        let life =
            std::mem::replace(&mut self.life, Life::Absent { backoff: StartBackoff::default() });
        if let Life::Serving { child, .. } = life {
            child.retire();
        }
    }
}

/// The reason a job fails with after [`START_ATTEMPTS`] failed starts: the last failure, and the
/// worker's death and standard error when it died before its handshake.
fn start_failure(error: &StartError) -> String {
    let mut reason = format!("{START_ATTEMPTS} attempts failed; the last: {}", error.message);
    if let Some(death) = &error.death {
        reason.push_str(&format!("; worker {} {}", death.pid, death.reason));
        if !death.stderr_tail.is_empty() {
            reason.push_str(&format!("; its stderr ended with: {}", death.stderr_tail));
        }
    }
    reason
}

/// Completes a death's reason with what the slot knows: a protocol problem, a memory limit.
fn explain(death: &mut Death, ended: &Ended, max_memory: Option<u64>) {
    if let Ended::Broke(problem) = ended {
        death.reason = format!("{problem}; the worker was killed and {}", death.reason);
    } else if let Some(limit) = max_memory
        && death.is_out_of_memory
    {
        death.reason = format!("hit its memory limit of {limit} bytes and {}", death.reason);
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
    }

    /// Supervision with fake workers: what a test did to them is in `Log`.
    mod fake {
        use super::*;
        use std::sync::{Arc, Mutex};

        #[derive(Debug, Clone, PartialEq, Eq)]
        pub(super) enum Event {
            Spawned(u32),
            Reaped(u32),
            Retired(u32),
            Paused(u128),
        }

        pub(super) type Log = Arc<Mutex<Vec<Event>>>;

        pub(super) struct FakeChild {
            pub(super) pid: u32,
            pub(super) claims: Arc<Claims>,
            log: Log,
        }

        impl Child for FakeChild {
            type Claims = Arc<Claims>;

            fn pid(&self) -> u32 {
                self.pid
            }

            fn reap(self) -> (Death, Arc<Claims>) {
                self.log.lock().unwrap().push(Event::Reaped(self.pid));
                let death = Death {
                    pid: self.pid,
                    reason: "was killed by signal 9 (SIGKILL)".to_owned(),
                    stderr_tail: String::new(),
                    is_out_of_memory: false,
                    is_stack_overflow: false,
                };
                (death, self.claims)
            }

            fn retire(self) {
                self.log.lock().unwrap().push(Event::Retired(self.pid));
            }
        }

        /// Spawns workers with fresh claims; fails while `failures` says so.
        pub(super) struct FakeSpawn {
            pub(super) log: Log,
            pub(super) next_pid: u32,
            /// For each coming spawn: fail with this message (`Some`) or start (`None`).
            pub(super) failures: std::collections::VecDeque<Option<&'static str>>,
        }

        impl Spawn for FakeSpawn {
            type Child = FakeChild;

            fn spawn(&mut self) -> Result<FakeChild, StartError> {
                if let Some(message) = self.failures.pop_front().flatten() {
                    let death = Death {
                        pid: 7,
                        reason: "exited with status 101".to_owned(),
                        stderr_tail: "bad setup".to_owned(),
                        is_out_of_memory: false,
                        is_stack_overflow: false,
                    };
                    return Err(StartError { message: message.to_owned(), death: Some(death) });
                }
                self.next_pid += 1;
                self.log.lock().unwrap().push(Event::Spawned(self.next_pid));
                let claims = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
                Ok(FakeChild { pid: self.next_pid, claims, log: Arc::clone(&self.log) })
            }

            fn pause(&mut self, delay: Duration) {
                self.log.lock().unwrap().push(Event::Paused(delay.as_millis()));
            }
        }

        /// A job as the slot keeps it.
        #[derive(Debug, PartialEq, Eq)]
        pub(super) struct Job {
            pub(super) name: &'static str,
            pub(super) deaths: u32,
            pub(super) is_finished: bool,
        }

        impl Waiting for Job {
            fn is_finished(&self) -> bool {
                self.is_finished
            }

            fn deaths(&self) -> u32 {
                self.deaths
            }

            fn set_deaths(&mut self, deaths: u32) {
                self.deaths = deaths;
            }
        }

        pub(super) fn supervisor(
            failures: &[Option<&'static str>],
        ) -> (Supervisor<FakeSpawn>, Log) {
            let log = Log::default();
            let spawn = FakeSpawn {
                log: Arc::clone(&log),
                next_pid: 100,
                failures: failures.iter().copied().collect(),
            };
            (Supervisor::new(spawn), log)
        }

        pub(super) fn job(name: &'static str) -> Job {
            Job { name, deaths: 0, is_finished: false }
        }
    }

    use fake::{job, supervisor, Event, Job};
    use std::sync::Arc;

    /// Sends `jobs` to the supervisor's worker as the slot does: numbered from 1, claims
    /// published before the frames go out.
    fn send(supervisor: &Supervisor<fake::FakeSpawn>, jobs: Vec<Job>) -> Vec<(u64, Job)> {
        let claims = &supervisor.child().expect("a worker serves").claims;
        jobs.into_iter()
            .zip(1..)
            .map(|(job, seq)| {
                claim::publish(claim::slot(claims, seq), seq);
                (seq, job)
            })
            .collect()
    }

    fn worker_starts(supervisor: &Supervisor<fake::FakeSpawn>, seq: u64) {
        let claims = &supervisor.child().expect("a worker serves").claims;
        assert_eq!(claim::start(claim::slot(claims, seq), seq), Ok(true));
    }

    fn names(jobs: &[Job]) -> Vec<&'static str> {
        jobs.iter().map(|job| job.name).collect()
    }

    #[test]
    fn a_death_fails_the_running_job_and_requeues_the_rest_for_a_restarted_worker() {
        let (mut supervisor, log) = supervisor(&[]);
        assert_eq!(supervisor.start(), Ok(Started { epoch: 1, is_restart: false }));
        let in_flight = send(&supervisor, vec![job("a"), job("b"), job("c")]);
        worker_starts(&supervisor, 1);
        let burial = supervisor.bury(Ended::Closed, in_flight, None).expect("a worker served");
        assert_eq!(burial.death.pid, 101);
        assert_eq!(burial.died.len(), 1);
        let (died, death) = &burial.died[0];
        assert_eq!((died.name, death.reason.as_str()), ("a", "was killed by signal 9 (SIGKILL)"));
        assert_eq!(names(&burial.requeued), ["b", "c"]);
        assert!(supervisor.child().is_none(), "the slot has no worker until the next job");
        assert_eq!(supervisor.start(), Ok(Started { epoch: 2, is_restart: true }));
        assert_eq!(
            *log.lock().unwrap(),
            [Event::Spawned(101), Event::Reaped(101), Event::Spawned(102)]
        );
    }

    #[test]
    fn a_job_that_finished_without_its_reply_is_never_requeued() {
        let (mut supervisor, _) = supervisor(&[]);
        supervisor.start().unwrap();
        let in_flight = send(&supervisor, vec![job("done"), job("next")]);
        worker_starts(&supervisor, 1);
        let claims = Arc::clone(&supervisor.child().unwrap().claims);
        assert!(claim::finish(claim::slot(&claims, 1), 1));
        let burial = supervisor.bury(Ended::Closed, in_flight, None).unwrap();
        assert_eq!(burial.died.iter().map(|(job, _)| job.name).collect::<Vec<_>>(), ["done"]);
        assert_eq!(names(&burial.requeued), ["next"]);
    }

    #[test]
    fn a_job_cancelled_in_flight_is_neither_requeued_nor_failed_again() {
        let (mut supervisor, _) = supervisor(&[]);
        supervisor.start().unwrap();
        let mut jobs = vec![job("running"), job("cancelled"), job("waiting")];
        jobs[1].is_finished = true;
        let in_flight = send(&supervisor, jobs);
        worker_starts(&supervisor, 1);
        let claims = Arc::clone(&supervisor.child().unwrap().claims);
        assert_eq!(claim::stop(claim::slot(&claims, 2), 2, true), claim::Stopped::BeforeStart);
        let burial = supervisor.bury(Ended::Closed, in_flight, None).unwrap();
        assert_eq!(burial.died.len(), 1);
        assert_eq!(names(&burial.requeued), ["waiting"], "the cancelled job resolved already");
    }

    #[test]
    fn a_job_killed_by_its_cancel_while_running_counts_as_run() {
        let (mut supervisor, _) = supervisor(&[]);
        supervisor.start().unwrap();
        let in_flight = send(&supervisor, vec![job("killed"), job("behind")]);
        worker_starts(&supervisor, 1);
        let claims = Arc::clone(&supervisor.child().unwrap().claims);
        assert_eq!(claim::stop(claim::slot(&claims, 1), 1, true), claim::Stopped::MustKill);
        let burial = supervisor.bury(Ended::Closed, in_flight, None).unwrap();
        assert_eq!(burial.died[0].0.name, "killed", "never run twice");
        assert_eq!(names(&burial.requeued), ["behind"]);
    }

    #[test]
    fn a_job_whose_workers_die_idle_three_times_is_reported_not_resent() {
        let (mut supervisor, _) = supervisor(&[]);
        let mut pending = vec![job("poison")];
        for round in 1..DEATHS_BEFORE_START {
            supervisor.start().unwrap();
            let in_flight = send(&supervisor, pending);
            let burial = supervisor.bury(Ended::Closed, in_flight, None).unwrap();
            assert!(burial.died.is_empty(), "round {round}: an idle death fails nobody yet");
            assert_eq!(burial.requeued[0].deaths, round);
            pending = burial.requeued;
        }
        supervisor.start().unwrap();
        let in_flight = send(&supervisor, pending);
        let burial = supervisor.bury(Ended::Closed, in_flight, None).unwrap();
        let (job, death) = &burial.died[0];
        assert_eq!(job.name, "poison");
        assert!(
            death.reason.ends_with("its worker died before starting it 3 times in a row"),
            "{}",
            death.reason
        );
    }

    #[test]
    fn a_broken_protocol_and_a_memory_limit_are_in_the_reason() {
        let (mut supervisor, _) = supervisor(&[]);
        supervisor.start().unwrap();
        let burial = supervisor
            .bury(Ended::Broke("the worker sent garbage".into()), Vec::<(u64, Job)>::new(), None)
            .unwrap();
        assert_eq!(
            burial.death.reason,
            "the worker sent garbage; the worker was killed and was killed by signal 9 (SIGKILL)"
        );
        let mut death = burial.death.clone();
        death.reason = "was killed by signal 9 (SIGKILL)".into();
        death.is_out_of_memory = true;
        explain(&mut death, &Ended::Closed, Some(1 << 20));
        assert_eq!(
            death.reason,
            "hit its memory limit of 1048576 bytes and was killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn burying_without_a_worker_reaps_nothing() {
        let (mut supervisor, log) = supervisor(&[]);
        assert!(supervisor.bury(Ended::Closed, vec![(1, job("a"))], None).is_none());
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn retiring_asks_the_worker_to_exit_and_the_next_one_is_a_restart() {
        let (mut supervisor, log) = supervisor(&[]);
        supervisor.start().unwrap();
        assert_eq!(supervisor.start(), Ok(Started { epoch: 1, is_restart: false }), "serving");
        supervisor.retire();
        supervisor.retire();
        assert!(supervisor.child().is_none());
        assert_eq!(supervisor.start(), Ok(Started { epoch: 2, is_restart: true }));
        assert_eq!(
            *log.lock().unwrap(),
            [Event::Spawned(101), Event::Retired(101), Event::Spawned(102)]
        );
    }

    #[test]
    fn failed_starts_back_off_report_the_fifth_and_go_on_backing_off() {
        let failures = [Some("cannot exec"); 7];
        let (mut supervisor, log) = supervisor(&failures);
        let reason = supervisor.start().unwrap_err();
        assert_eq!(
            reason,
            "5 attempts failed; the last: cannot exec; worker 7 exited with status 101; \
             its stderr ended with: bad setup"
        );
        let pauses = |log: &fake::Log| -> Vec<u128> {
            log.lock()
                .unwrap()
                .iter()
                .filter_map(|event| match event {
                    Event::Paused(ms) => Some(*ms),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(pauses(&log), [20, 40, 80, 160, 320]);
        assert!(supervisor.child().is_none());
        // The next job tries again, still backing off, and gets a worker at the eighth try.
        assert_eq!(supervisor.start(), Ok(Started { epoch: 1, is_restart: false }));
        assert_eq!(pauses(&log), [20, 40, 80, 160, 320, 640, 1280]);
        // Once a worker served, the count starts afresh: one failure waits 20 ms again.
        supervisor.retire();
        supervisor.spawn.failures.push_back(Some("once"));
        assert_eq!(supervisor.start(), Ok(Started { epoch: 2, is_restart: true }));
        assert_eq!(pauses(&log)[7..], [20]);
    }
}
