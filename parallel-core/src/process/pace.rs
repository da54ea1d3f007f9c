//! How a slot paces its worker: how many jobs to keep in flight, when its reader wakes it, when
//! an idle slot takes jobs back from a busy one, when a running job of a dropped `Map` is worth
//! killing. Pure arithmetic on durations and counts, apart from the threads that apply it, so that
//! every rule is a unit test.
//!
//! Everything follows from one measurement: the average time between two replies of a busy worker
//! (its task time), kept by the slot's reader.

use std::time::{Duration, Instant};

/// The most jobs a slot keeps in flight on its worker (fewer than the worker's claims).
pub(super) const MAX_IN_FLIGHT: usize = 64;
const _: () = assert!(MAX_IN_FLIGHT < super::claim::CLAIMS);
/// How much work, in time, a slot aims to keep queued inside its worker: enough to hide a round
/// trip, little enough that a long task does not hold back others another worker could run.
const QUEUED_WORK: Duration = Duration::from_micros(200);
/// Tasks up to this long get a job queued behind the running one even when `QUEUED_WORK` is less;
/// a running task of a dropped `Map` this short is left to finish rather than killed.
pub(super) const SHORT_TASK: Duration = Duration::from_millis(10);
/// An idle slot takes back the jobs waiting behind another worker's task once that task has run
/// four times its worker's average, but never before `STEAL_AFTER_LEAST` nor later than
/// `STEAL_AFTER_MOST`.
const STEAL_AFTER_LEAST: Duration = Duration::from_millis(1);
/// A job of a dropped `Map` in flight this long is killed whatever its worker's average.
const STUCK_IN_FLIGHT: Duration = Duration::from_secs(1);
const STEAL_AFTER_MOST: Duration = Duration::from_millis(50);

/// How many jobs a slot should keep in flight, from its worker's task time (0: unknown yet).
pub(super) fn window(task_nanos: u64) -> usize {
    if task_nanos == 0 {
        return 1;
    }
    let window = (QUEUED_WORK.as_nanos() as u64 / task_nanos) as usize;
    // One job waiting behind the running one spares the worker a round trip of idleness per task
    // (7% of a 1 ms task here); for long tasks it could leave the job waiting while another
    // worker has nothing to do, so only while that costs at most `SHORT_TASK`.
    let least = if task_nanos <= SHORT_TASK.as_nanos() as u64 { 2 } else { 1 };
    window.clamp(least, MAX_IN_FLIGHT)
}

/// Tasks up to this long travel several to a frame: for longer ones a frame's cost is lost in
/// the task's.
const CHUNK_TASK: Duration = Duration::from_micros(100);

/// How many jobs of one task a slot puts in one frame, from its worker's task time (0: unknown
/// yet): as many as its window holds when tasks are short, else one. The frame changes nothing
/// else: each job keeps its claim, its place in flight and its reply.
pub(super) fn chunk(task_nanos: u64) -> usize {
    if task_nanos == 0 || task_nanos > CHUNK_TASK.as_nanos() as u64 {
        return 1;
    }
    window(task_nanos)
}

/// The task time after a reply at `now` to a job sent at `sent_at`, the previous reply having
/// come at `last_reply`: the job's time counts from whichever is later (it waited behind the
/// previous one), averaged with weight 1/8.
pub(super) fn next_average(
    average: u64,
    sent_at: Instant,
    last_reply: Option<Instant>,
    now: Instant,
) -> u64 {
    let since = last_reply.map_or(sent_at, |last| last.max(sent_at));
    let nanos = u64::try_from(now.saturating_duration_since(since).as_nanos()).unwrap_or(u64::MAX);
    if average == 0 {
        nanos.max(1)
    } else {
        average.saturating_mul(7).saturating_add(nanos) / 8
    }
}

/// How many of `queued` jobs a slot with `room` free places takes at once: no more than an even
/// part of the queue, so that the other slots get theirs.
pub(super) fn share(queued: usize, workers: usize, room: usize) -> usize {
    room.min(queued.div_ceil(workers.max(1)).max(1)).min(queued)
}

/// Whether a reply that leaves `left` jobs in flight wakes the slot thread: when half its window
/// is free and jobs wait (it then sends a batch), or when nothing is left in flight and the slot
/// has something to do; not on every reply, since a wake-up costs more than a short task.
pub(super) fn wakes_after_reply(
    left: usize,
    window: usize,
    has_work: bool,
    must_look: bool,
) -> bool {
    (left == 0 && (has_work || must_look)) || (has_work && left == window / 2)
}

/// How long a task must have run on its worker before an idle slot takes back the jobs waiting
/// behind it.
pub(super) fn steal_after(task_nanos: u64) -> Duration {
    Duration::from_nanos(task_nanos.saturating_mul(4)).clamp(STEAL_AFTER_LEAST, STEAL_AFTER_MOST)
}

/// Whether a running job nobody wants any more is worth killing rather than letting it finish:
/// its worker's tasks average over [`SHORT_TASK`], or it has been in flight for over
/// [`STUCK_IN_FLIGHT`] (a hung task among short ones). Time in flight alone says little below
/// that: on a busy machine a job of microseconds can wait milliseconds behind others.
pub(super) fn is_long(task_nanos: u64, in_flight: Duration) -> bool {
    Duration::from_nanos(task_nanos) > SHORT_TASK || in_flight > STUCK_IN_FLIGHT
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICRO: u64 = 1_000;
    const MILLI: u64 = 1_000_000;

    #[test]
    fn the_window_holds_about_200_microseconds_of_work() {
        assert_eq!(window(0), 1, "one job until a reply says how long tasks take");
        assert_eq!(window(1), MAX_IN_FLIGHT, "no-op tasks pipeline as deep as allowed");
        assert_eq!(window(10 * MICRO), 20);
        assert_eq!(window(100 * MICRO), 2);
    }

    #[test]
    fn short_tasks_share_frames_as_many_as_the_window_holds() {
        assert_eq!(chunk(0), 1, "unknown: one job a frame");
        assert_eq!(chunk(1), MAX_IN_FLIGHT);
        assert_eq!(chunk(10 * MICRO), 20);
        assert_eq!(chunk(100 * MICRO), 2);
        assert_eq!(chunk(100 * MICRO + 1), 1, "longer tasks one a frame");
        assert_eq!(chunk(MILLI), 1);
    }

    #[test]
    fn short_tasks_keep_one_job_behind_and_long_ones_none() {
        assert_eq!(window(MILLI), 2);
        assert_eq!(window(10 * MILLI), 2);
        assert_eq!(window(10 * MILLI + 1), 1);
        assert_eq!(window(60_000 * MILLI), 1);
    }

    #[test]
    fn the_average_counts_from_the_later_of_send_and_previous_reply() {
        let start = Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        assert_eq!(next_average(0, at(0), None, at(100)), 100 * MICRO, "the first sets it");
        // Sent at 0 but waited behind a job answered at 90: it took 10 µs.
        assert_eq!(next_average(0, at(0), Some(at(90)), at(100)), 10 * MICRO);
        assert_eq!(next_average(80 * MICRO, at(0), None, at(160)), 90 * MICRO, "weight 1/8");
        assert_eq!(next_average(0, at(5), None, at(5)), 1, "never 0, which means unknown");
        assert_eq!(next_average(u64::MAX, at(0), None, at(1)), u64::MAX / 8, "no overflow");
    }

    #[test]
    fn a_slot_takes_its_part_of_the_queue() {
        assert_eq!(share(100, 2, 64), 50);
        assert_eq!(share(100, 2, 10), 10, "no more than the room");
        assert_eq!(share(1, 4, 64), 1, "at least one");
        assert_eq!(share(0, 4, 64), 0, "nothing from an empty queue");
        assert_eq!(share(7, 0, 64), 7, "no division by zero");
    }

    #[test]
    fn replies_wake_the_slot_only_when_it_has_something_to_do() {
        assert!(!wakes_after_reply(5, 64, true, false), "a batch is still in flight");
        assert!(wakes_after_reply(32, 64, true, false), "half the window is free");
        assert!(!wakes_after_reply(32, 64, false, false), "nothing to send");
        assert!(wakes_after_reply(0, 64, true, false));
        assert!(wakes_after_reply(0, 64, false, true), "must retire, stop or take back");
        assert!(!wakes_after_reply(0, 64, false, false));
    }

    #[test]
    fn jobs_are_taken_back_after_four_times_the_average_within_bounds() {
        assert_eq!(steal_after(0), STEAL_AFTER_LEAST);
        assert_eq!(steal_after(MICRO), STEAL_AFTER_LEAST);
        assert_eq!(steal_after(2 * MILLI), Duration::from_millis(8));
        assert_eq!(steal_after(u64::MAX), STEAL_AFTER_MOST);
    }

    #[test]
    fn only_long_jobs_of_a_dropped_map_are_killed() {
        assert!(!is_long(MICRO, Duration::from_millis(1)));
        assert!(
            !is_long(MICRO, Duration::from_millis(50)),
            "a short job delayed by a busy machine"
        );
        assert!(is_long(MICRO, Duration::from_millis(1001)), "in flight too long: hung");
        assert!(is_long(11 * MILLI, Duration::ZERO), "its worker's tasks are long");
        assert!(!is_long(0, Duration::ZERO), "unknown and just sent: left to finish");
    }
}
