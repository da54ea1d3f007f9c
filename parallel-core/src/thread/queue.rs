//! The thread backend's queue: the jobs submitted and not taken yet, and the runners that drain
//! it.
//!
//! A rayon `spawn` allocates its closure and goes through rayon's injector, its work-stealing
//! and the epoch of its deques: about half a no-op task's cost, paid per task. So a job is not
//! a rayon job: it is pushed on this queue, and a *runner*, a rayon job of its own, takes jobs
//! off it and runs them one after another. At most one runner per worker thread is counted;
//! a submit starts one only when fewer are counted, so under a burst the workers' runners drain
//! the queue and a task costs a push and a pop.
//!
//! The protocol (checked by the loom models below): a runner stays counted while it runs jobs,
//! and when the queue is empty it leaves — it uncounts itself, then looks at the queue again,
//! and if a job came meanwhile it counts itself back (unless the count is full) and goes on.
//! A submit pushes, then reads the count, and starts a runner if it is not full. Both sides put
//! a `SeqCst` fence between their write and their read: whichever of the two goes second in
//! that order sees the other's write, so a job pushed while the last runner leaves is found by
//! that runner or by the one the submit starts; never by neither.
//!
//! Before it leaves, a runner that is not nested lingers: it looks at the queue for a few
//! microseconds (spinning, then yielding), as rayon's idle workers look for work, so that a
//! caller that submits one task at a time finds its runner still there.
//!
//! A runner gives its thread back to rayon now and then (after [`BATCH`] jobs, or after one job
//! when it runs nested inside a task that waits in a rayon `join`): it starts its successor,
//! which inherits its count, and returns, so that rayon's own work (a task's `par_iter`) gets
//! the thread and a waiting task's `join` returns as soon as its work is done.

use std::sync::Arc;

use crate::sync::{AtomicUsize, Backoff, Ordering};

/// How many jobs a runner runs before it hands its place to a successor (see the module note).
pub(super) const BATCH: usize = 64;

/// A queued job, seen without its task type.
pub(crate) trait Runnable: Send + Sync {
    /// Runs the job on this worker thread, unless it was claimed or cancelled meanwhile.
    fn run(self: Arc<Self>);
}

/// The jobs waiting for a runner, and the count of runners.
pub(crate) struct Queue {
    jobs: Jobs,
    /// Runners started and not left.
    runners: AtomicUsize,
    /// One per worker thread.
    max_runners: usize,
}

impl Queue {
    pub(crate) fn new(max_runners: usize) -> Self {
        Queue { jobs: Jobs::default(), runners: AtomicUsize::new(0), max_runners }
    }

    /// Queues `job`; `true` if the caller must start a runner (it is counted already).
    pub(crate) fn push(&self, job: Arc<dyn Runnable>) -> bool {
        self.jobs.push(job);
        fence();
        self.runners.load(Ordering::SeqCst) < self.max_runners && self.count_in()
    }

    /// The next job, if any.
    pub(crate) fn pop(&self) -> Option<Arc<dyn Runnable>> {
        self.jobs.pop()
    }

    /// A runner that found the queue empty looks at it a little longer, spinning, then
    /// yielding its thread, as rayon's idle workers do: `true` if a job came.
    pub(crate) fn linger(&self) -> bool {
        let backoff = Backoff::new();
        while self.jobs.is_empty() {
            if backoff.is_completed() {
                return false;
            }
            backoff.snooze();
        }
        true
    }

    /// A runner that found the queue empty leaves: `true` if it must go on instead, a job having
    /// come meanwhile (it is counted again).
    pub(crate) fn leave(&self) -> bool {
        self.runners.fetch_sub(1, Ordering::SeqCst);
        fence();
        !self.jobs.is_empty() && self.count_in()
    }

    /// Counts one more runner, unless the count is full.
    fn count_in(&self) -> bool {
        let mut runners = self.runners.load(Ordering::SeqCst);
        while runners < self.max_runners {
            match self.runners.compare_exchange_weak(
                runners,
                runners + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => runners = now,
            }
        }
        false
    }
}

#[cfg(not(all(test, loom)))]
fn fence() {
    std::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(all(test, loom))]
fn fence() {
    ::loom::sync::atomic::fence(Ordering::SeqCst);
}

/// The queue itself: crossbeam's injector (rayon's own), lock-free and linearizable.
#[cfg(not(all(test, loom)))]
#[derive(Default)]
struct Jobs(crossbeam_deque::Injector<Arc<dyn Runnable>>);

#[cfg(not(all(test, loom)))]
impl Jobs {
    fn push(&self, job: Arc<dyn Runnable>) {
        self.0.push(job);
    }

    fn pop(&self) -> Option<Arc<dyn Runnable>> {
        loop {
            match self.0.steal() {
                crossbeam_deque::Steal::Success(job) => return Some(job),
                crossbeam_deque::Steal::Empty => return None,
                crossbeam_deque::Steal::Retry => {}
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Under loom, a locked deque stands for the injector (loom cannot run crossbeam's atomics):
/// the protocol above relies only on the queue being linearizable, which both are.
#[cfg(all(test, loom))]
#[derive(Default)]
struct Jobs(crate::sync::Mutex<std::collections::VecDeque<Arc<dyn Runnable>>>);

#[cfg(all(test, loom))]
impl Jobs {
    fn push(&self, job: Arc<dyn Runnable>) {
        self.0.lock().unwrap().push_back(job);
    }

    fn pop(&self) -> Option<Arc<dyn Runnable>> {
        self.0.lock().unwrap().pop_front()
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }
}

/// Models of the runners' count, checked by loom in every interleaving (see `crate::sync`).
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::thread;

    /// A job that counts its runs.
    struct Count(Arc<std::sync::atomic::AtomicUsize>);

    impl Runnable for Count {
        fn run(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A runner's loop, as `worker::run_queue` runs it (without the hand-over to a successor).
    /// Lingering is optional: loom's stand-in for the spin yields to the other threads, which
    /// then run first, and that hides the interleavings where a job comes just as a runner
    /// leaves (a model of the leaving alone finds a lost job if `leave` does not look again).
    fn runner(queue: &Queue, lingers: bool) {
        loop {
            while let Some(job) = queue.pop() {
                job.run();
            }
            if lingers && queue.linger() {
                continue;
            }
            if !queue.leave() {
                return;
            }
        }
    }

    /// Submits `jobs` jobs, starting a runner thread whenever `push` says so.
    fn submit(
        queue: &Arc<Queue>,
        ran: &Arc<std::sync::atomic::AtomicUsize>,
        jobs: usize,
        lingers: bool,
    ) {
        let mut runners = Vec::new();
        for _ in 0..jobs {
            if queue.push(Arc::new(Count(Arc::clone(ran)))) {
                let queue = Arc::clone(queue);
                runners.push(thread::spawn(move || runner(&queue, lingers)));
            }
        }
        for runner in runners {
            runner.join().unwrap();
        }
    }

    /// A job pushed while the only runner leaves is run: by that runner, which looks again
    /// after it uncounted itself, or by the runner the submit starts. Never by neither (a job
    /// left queued with no runner counted), and each job once.
    #[test]
    fn loom_a_job_pushed_while_the_last_runner_leaves_is_run() {
        ::loom::model(|| {
            let queue = Arc::new(Queue::new(1));
            let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            assert!(queue.push(Arc::new(Count(Arc::clone(&ran)))), "the first push starts one");
            let first = {
                let queue = Arc::clone(&queue);
                thread::spawn(move || runner(&queue, false))
            };
            submit(&queue, &ran, 1, false);
            first.join().unwrap();
            assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
            assert!(queue.pop().is_none(), "nothing left queued");
            assert_eq!(queue.runners.load(Ordering::SeqCst), 0, "every runner left");
        });
    }

    /// Two submitters and two runners at most, which linger: every job runs once, and the
    /// count does not stay up once the runners are gone.
    #[test]
    fn loom_two_submitters_and_two_runners() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let queue = Arc::new(Queue::new(2));
            let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let other = {
                let (queue, ran) = (Arc::clone(&queue), Arc::clone(&ran));
                thread::spawn(move || submit(&queue, &ran, 1, true))
            };
            submit(&queue, &ran, 1, true);
            other.join().unwrap();
            assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
            assert!(queue.pop().is_none(), "nothing left queued");
            assert_eq!(queue.runners.load(Ordering::SeqCst), 0, "every runner left");
        });
    }
}
