//! Who decides whether a job sent to a worker runs: one word per job in memory the pool and the
//! worker share, moved by compare-and-set.
//!
//! A job sent to a worker may be cancelled by its caller, taken back by the pool for an idle
//! worker, or caught in the worker's death, while the worker is about to start it. Asking through
//! the socket cannot settle such races (the worker may be busy for an hour and not read it; a
//! `SIGKILL` aimed at one job may land on the next). A word settles them: the worker starts a job
//! only by moving its word from `Pending` to `Started`, and the pool stops it only by moving the
//! same word away from `Pending` (it will never start) or from `Started` to `Killing` (the worker
//! cannot go on to another job, so a `SIGKILL` sent next hits this job and no other). After a
//! death, the words say exactly which job was running: that one is reported, the others never
//! started and run elsewhere.
//!
//! A job's word is `claims[seq % CLAIMS]`, where `seq` counts the jobs sent to this worker (one
//! per `Run` frame, one per entry of a `RunMany` frame; the worker counts them as it reads). The pool keeps fewer than [`CLAIMS`] jobs in
//! flight on a worker, so the jobs in flight never share a word; every value carries its `seq`,
//! so a stale value of an earlier job never passes for a later one.
//!
//! ```text
//!            worker: start            worker: reply out
//!  Pending ------------------> Started -----------------> Done
//!     |                           |
//!     | pool: cancel, take back   | pool: cancel (then SIGKILL)
//!     v                           v
//!  Cancelled (never runs)      Killing (the worker stops before any other job)
//! ```
//!
//! The worker is untrusted: whatever it writes here, the pool only reads values and sets them with
//! compare-and-set, and a value it does not expect counts as "may have started", which can blame
//! one of that worker's own jobs but never run a job twice.

use crate::sync::{AtomicU64, Ordering};

/// How many claims a worker has: more than the jobs a pool keeps in flight on a worker.
pub(crate) const CLAIMS: usize = 128;
/// Words from one claim to the next: each on a cache line of its own, so that the pool publishing
/// the next job's claim and the worker moving the running job's do not take a line from each
/// other (two processes on two cores, several moves per job).
const STRIDE: usize = 8;
/// The words the claims take in shared memory.
pub(crate) const CLAIM_WORDS: usize = CLAIMS * STRIDE;

/// A worker's claims, as they lie in shared memory.
pub(crate) type Claims = [AtomicU64; CLAIM_WORDS];

/// The state of a sent job, as its word says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Sent, not started: the worker may still start it, or the pool stop it.
    Pending,
    /// The worker started it.
    Started,
    /// Stopped before it started: it never runs.
    Cancelled,
    /// The worker put its reply out.
    Done,
    /// Stopped while it ran: the worker is being killed.
    Killing,
    /// The word belongs to another job (or holds garbage).
    Other,
}

const PENDING: u64 = 0;
const STARTED: u64 = 1;
const CANCELLED: u64 = 2;
const DONE: u64 = 3;
const KILLING: u64 = 4;
const STATE_BITS: u32 = 3;

fn word(seq: u64, state: u64) -> u64 {
    (seq << STATE_BITS) | state
}

/// The word of job `seq` among `claims`.
pub(crate) fn slot(claims: &Claims, seq: u64) -> &AtomicU64 {
    &claims[(seq % CLAIMS as u64) as usize * STRIDE]
}

/// Reads job `seq`'s state.
pub(crate) fn read(claim: &AtomicU64, seq: u64) -> Claim {
    decode(claim.load(Ordering::SeqCst), seq)
}

fn decode(value: u64, seq: u64) -> Claim {
    if value >> STATE_BITS != seq & (u64::MAX >> STATE_BITS) {
        return Claim::Other;
    }
    match value & ((1 << STATE_BITS) - 1) {
        PENDING => Claim::Pending,
        STARTED => Claim::Started,
        CANCELLED => Claim::Cancelled,
        DONE => Claim::Done,
        KILLING => Claim::Killing,
        _ => Claim::Other,
    }
}

fn swap(claim: &AtomicU64, seq: u64, from: u64, to: u64) -> bool {
    claim
        .compare_exchange(word(seq, from), word(seq, to), Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// The pool's side, before the job's frame is written: job `seq` is pending.
pub(crate) fn publish(claim: &AtomicU64, seq: u64) {
    claim.store(word(seq, PENDING), Ordering::SeqCst);
}

/// What stopping a job found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// It had not started, and now never will.
    BeforeStart,
    /// It was running; the worker goes on to no other job, and must now be killed.
    MustKill,
    /// It was running, and is left to finish (its reply will be dropped).
    LeftRunning,
    /// It had finished, or was stopped already, or the word is not its own.
    Nothing,
}

/// The pool's side: stops job `seq`. With `kill`, a running job is marked for killing (the caller
/// then sends `SIGKILL`); without, it is left to finish.
pub(crate) fn stop(claim: &AtomicU64, seq: u64, kill: bool) -> Stopped {
    loop {
        match read(claim, seq) {
            Claim::Pending => {
                if swap(claim, seq, PENDING, CANCELLED) {
                    return Stopped::BeforeStart;
                }
            }
            Claim::Started if kill => {
                if swap(claim, seq, STARTED, KILLING) {
                    return Stopped::MustKill;
                }
            }
            Claim::Started => return Stopped::LeftRunning,
            Claim::Cancelled | Claim::Done | Claim::Killing | Claim::Other => {
                return Stopped::Nothing
            }
        }
    }
}

/// The pool's side: takes job `seq` back if it has not started (to send it to another worker);
/// `false` if it started (or is no longer this job's).
pub(crate) fn take_back(claim: &AtomicU64, seq: u64) -> bool {
    swap(claim, seq, PENDING, CANCELLED)
}

/// The worker's side, just before running job `seq`: `Ok(true)` to run it, `Ok(false)` to skip
/// it (stopped before it started), `Err` if the word is not this job's (the pool and the worker
/// disagree on the count of jobs: a broken channel).
pub(crate) fn start(claim: &AtomicU64, seq: u64) -> Result<bool, Claim> {
    if swap(claim, seq, PENDING, STARTED) {
        return Ok(true);
    }
    match read(claim, seq) {
        Claim::Cancelled => Ok(false),
        other => Err(other),
    }
}

/// The worker's side, once job `seq`'s reply is out: `false` if the pool is killing it for this
/// job (the worker must then start nothing more and wait for its end).
pub(crate) fn finish(claim: &AtomicU64, seq: u64) -> bool {
    swap(claim, seq, STARTED, DONE) || read(claim, seq) != Claim::Killing
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fresh(seq: u64) -> AtomicU64 {
        let claim = AtomicU64::new(u64::MAX);
        publish(&claim, seq);
        claim
    }

    #[test]
    fn a_job_runs_and_finishes() {
        let claim = fresh(5);
        assert_eq!(read(&claim, 5), Claim::Pending);
        assert_eq!(start(&claim, 5), Ok(true));
        assert_eq!(read(&claim, 5), Claim::Started);
        assert!(finish(&claim, 5));
        assert_eq!(read(&claim, 5), Claim::Done);
        assert_eq!(stop(&claim, 5, true), Stopped::Nothing, "a finished job is not killed");
        assert!(!take_back(&claim, 5));
    }

    #[test]
    fn a_job_stopped_before_it_starts_never_starts() {
        for kill in [true, false] {
            let claim = fresh(9);
            assert_eq!(stop(&claim, 9, kill), Stopped::BeforeStart);
            assert_eq!(start(&claim, 9), Ok(false));
            assert_eq!(read(&claim, 9), Claim::Cancelled);
            assert_eq!(stop(&claim, 9, kill), Stopped::Nothing, "stopped once");
        }
        let claim = fresh(9);
        assert!(take_back(&claim, 9));
        assert_eq!(start(&claim, 9), Ok(false));
    }

    #[test]
    fn a_running_job_is_killed_or_left_running_and_the_worker_learns_it() {
        let claim = fresh(3);
        assert_eq!(start(&claim, 3), Ok(true));
        assert!(!take_back(&claim, 3), "a started job cannot be taken back");
        assert_eq!(stop(&claim, 3, false), Stopped::LeftRunning);
        assert_eq!(stop(&claim, 3, true), Stopped::MustKill);
        assert_eq!(read(&claim, 3), Claim::Killing);
        assert!(!finish(&claim, 3), "the worker must not go on to another job");
        assert_eq!(stop(&claim, 3, true), Stopped::Nothing, "killed once");
    }

    #[test]
    fn stale_and_foreign_words_are_never_taken_for_the_job() {
        let claim = fresh(7);
        // The word of the job sent `CLAIMS` jobs earlier, or garbage a worker wrote.
        assert_eq!(read(&claim, 7 + CLAIMS as u64), Claim::Other);
        assert_eq!(stop(&claim, 7 + CLAIMS as u64, true), Stopped::Nothing);
        assert!(start(&claim, 7 + CLAIMS as u64).is_err());
        claim.store(word(7, 6), Ordering::SeqCst);
        assert_eq!(read(&claim, 7), Claim::Other);
        assert_eq!(stop(&claim, 7, true), Stopped::Nothing);
        assert_eq!(start(&claim, 7), Err(Claim::Other));
    }

    #[test]
    fn jobs_in_flight_have_their_own_words() {
        let claims: Claims = std::array::from_fn(|_| AtomicU64::new(0));
        for seq in 1..=CLAIMS as u64 {
            publish(slot(&claims, seq), seq);
        }
        for seq in 1..=CLAIMS as u64 {
            assert_eq!(read(slot(&claims, seq), seq), Claim::Pending, "job {seq}");
        }
    }

    /// A worker starting and a pool stopping the same job at once: exactly one wins, and the job
    /// runs if and only if the pool was not told it stopped before the start.
    #[test]
    fn start_and_stop_race_to_one_decision() {
        for round in 0..2000u64 {
            let claim = Arc::new(fresh(round));
            let worker = {
                let claim = Arc::clone(&claim);
                std::thread::spawn(move || start(&claim, round))
            };
            let stopped = stop(&claim, round, round % 2 == 0);
            let started = worker.join().unwrap();
            match stopped {
                Stopped::BeforeStart => assert_eq!(started, Ok(false), "round {round}"),
                Stopped::MustKill | Stopped::LeftRunning => {
                    assert_eq!(started, Ok(true), "round {round}")
                }
                Stopped::Nothing => {
                    unreachable!("round {round}: a fresh job is pending or started")
                }
            }
        }
    }
}

/// Models of the claims, checked by loom in every interleaving (see `crate::sync`).
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::sync::Arc;
    use ::loom::thread;

    fn fresh(seq: u64) -> AtomicU64 {
        let claim = AtomicU64::new(u64::MAX);
        publish(&claim, seq);
        claim
    }

    /// The worker runs a job (start, then finish once its reply is out) while the pool stops it:
    /// exactly one of `Pending → Started` and `Pending → Cancelled` happens, the job runs if and
    /// only if the pool was not told it stopped before its start, and a worker whose finish
    /// fails is exactly one the pool must kill.
    #[test]
    fn loom_start_races_stop_to_one_decision() {
        for kill in [true, false] {
            ::loom::model(move || {
                let claim = Arc::new(fresh(5));
                let worker = {
                    let claim = Arc::clone(&claim);
                    thread::spawn(move || {
                        let is_started = start(&claim, 5).expect("the word is this job's");
                        (is_started, is_started && !finish(&claim, 5))
                    })
                };
                let stopped = stop(&claim, 5, kill);
                let (is_started, must_stop) = worker.join().unwrap();
                match stopped {
                    Stopped::BeforeStart => assert!(!is_started, "stopped before it started"),
                    Stopped::MustKill => assert!(is_started && must_stop && kill),
                    Stopped::LeftRunning => assert!(is_started && !must_stop && !kill),
                    // The worker finished first.
                    Stopped::Nothing => assert!(is_started && !must_stop),
                }
                let expected = match stopped {
                    Stopped::BeforeStart => Claim::Cancelled,
                    Stopped::MustKill => Claim::Killing,
                    Stopped::LeftRunning | Stopped::Nothing => Claim::Done,
                };
                assert_eq!(read(&claim, 5), expected);
            });
        }
    }

    /// A worker with two jobs in flight, as `serve` runs them, while the pool cancels the first
    /// (with a kill) and an idle slot takes back the second. A `SIGKILL` the pool sends after
    /// `MustKill` lands at any later moment; the worker has then started nothing else (invariant
    /// 2), each job is started by the worker or stopped by the pool and never both (1), and once
    /// the worker is gone (here: joined) a job whose word is `Pending` or `Cancelled` never ran
    /// (3).
    #[test]
    fn loom_a_killed_job_is_the_last_its_worker_starts() {
        ::loom::model(|| {
            let claims = Arc::new([fresh(1), fresh(2)]);
            let worker = {
                let claims = Arc::clone(&claims);
                thread::spawn(move || {
                    let mut started = Vec::new();
                    for (claim, seq) in claims.iter().zip(1..) {
                        if !start(claim, seq).expect("the word is this job's") {
                            continue; // `Skipped`
                        }
                        started.push(seq);
                        if !finish(claim, seq) {
                            break; // waits for its SIGKILL
                        }
                    }
                    started
                })
            };
            let taker = {
                let claims = Arc::clone(&claims);
                thread::spawn(move || take_back(&claims[1], 2))
            };
            let stopped = stop(&claims[0], 1, true);
            let started = worker.join().unwrap();
            let is_taken_back = taker.join().unwrap();

            if stopped == Stopped::MustKill {
                assert_eq!(started, [1], "the worker started nothing after the job to kill");
            }
            assert!(started.contains(&1) != (stopped == Stopped::BeforeStart));
            assert!(!(started.contains(&2) && is_taken_back), "job 2 started and taken back");
            for (claim, seq) in claims.iter().zip(1..) {
                let state = read(claim, seq);
                if matches!(state, Claim::Pending | Claim::Cancelled) {
                    assert!(!started.contains(&seq), "job {seq} ran, its word says {state:?}");
                }
                if started.contains(&seq) {
                    assert!(matches!(state, Claim::Started | Claim::Done | Claim::Killing));
                }
            }
        });
    }
}
