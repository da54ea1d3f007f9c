//! Who reads a worker's replies: its reader thread, or, while a caller waits for the only job in
//! flight on that worker, the caller itself (leader/follower).
//!
//! A reply read by the reader thread reaches a caller blocked in `join` through a second wake-up
//! (the reader wakes the caller), on top of the worker's wake-up of the reader. A caller that
//! reads the reply lane itself is woken by the worker directly: a round trip then costs what a
//! pipe's does, a wake-up each way. [`Lead`] is the hand-off between the two readers:
//!
//! - The reading state (the consumer `C`: the lane's reading end, the socket, the buffers) sits
//!   in a mutex; whoever holds it reads. The reader thread takes it to read and lets go of it
//!   before it sleeps; a caller only *tries* it ([`Lead::try_lead`]) and waits the usual way if
//!   the reader holds it (the reader is at work and resolves the job soon).
//! - A caller that took it *leads*: it sets `caller_leads`, then moves the reader's `asleep` word
//!   from 1 to 3 ([`PoolSide::deafen_reader`]): a reader asleep on the lane's futex stays asleep,
//!   and the worker's pushes, which wake a word only from 1, wake only the caller, which sleeps
//!   on the lane's `leader` word. A reader about to sleep looks at `caller_leads` after it set
//!   `asleep`, and then sleeps deafened (its word at 3) instead.
//! - The caller hands back ([`Leader`]'s drop) by clearing `caller_leads`, moving the reader's
//!   word from 3 to 1 ([`PoolSide::rearm_reader`]), then waking the reader if the lane holds a
//!   reply, the worker hung up, or the caller left it news (a broken frame, the end of the
//!   channel), and only then lets go of the mutex.
//!
//! The invariants and why they hold are in the README beside this file ("Who reads the
//! replies"); the loom models below check them.

use std::sync::Arc;
#[cfg(not(all(test, loom)))]
use std::time::Duration;

use super::ring::PoolSide;
use crate::sync::{seq_cst_handshake, AtomicBool, Mutex, MutexGuard, Ordering};

#[cfg(all(test, loom))]
type Duration = std::time::Duration;

/// The reading of one worker's replies, shared by its reader thread and the callers that wait
/// for their jobs on it.
pub(crate) struct Lead<C> {
    ring: Arc<PoolSide>,
    consumer: Mutex<C>,
    /// A caller holds the consumer and reads the lane: the reader sleeps deafened.
    caller_leads: AtomicBool,
}

impl<C> Lead<C> {
    pub(crate) fn new(ring: Arc<PoolSide>, consumer: C) -> Self {
        Lead { ring, consumer: Mutex::new(consumer), caller_leads: AtomicBool::new(false) }
    }

    /// The reader thread's hold of the consumer: waits while a caller leads.
    pub(crate) fn lock(&self) -> MutexGuard<'_, C> {
        self.consumer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The reader thread's sleep, with the lane found empty and the consumer let go of: looks
    /// again `spins` times, then sleeps on the lane's futex until the worker's next reply, its
    /// hang-up, a caller's hand-back with news, or `timeout`. While a caller leads, it sleeps
    /// deafened (its word at 3, which the worker's pushes leave alone) until the hand-back
    /// re-arms it and a push comes, or the hand-back has news. Returns whether the time ran out.
    pub(crate) fn reader_wait(&self, spins: u32, timeout: Option<Duration>) -> bool {
        let caller_leads = || self.caller_leads.load(Ordering::SeqCst);
        // The usual sleep looks at `caller_leads` after setting the reader's `asleep`, so that a
        // caller that took the lead before is seen (see `try_lead`); it returns then.
        let timed_out = !caller_leads() && self.ring.wait_reply(spins, timeout, &caller_leads);
        if !timed_out && caller_leads() {
            return self.ring.sleep_deafened(timeout, &caller_leads);
        }
        timed_out
    }

    /// A caller's attempt to read the replies itself: `None` if the reader (or another caller)
    /// is reading, or `admit` refuses (the caller's job is not the only one in flight, the
    /// channel ended).
    pub(crate) fn try_lead(&self, admit: impl FnOnce(&mut C) -> bool) -> Option<Leader<'_, C>> {
        let mut consumer = match self.consumer.try_lock() {
            Ok(consumer) => consumer,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if !admit(&mut consumer) {
            return None;
        }
        self.caller_leads.store(true, Ordering::SeqCst);
        seq_cst_handshake();
        // Pairs with `reader_wait`: either the reader sees `caller_leads` after setting its
        // `asleep` (and does not sleep on the lane), or its `asleep` was set before this and is
        // cleared here (it sleeps on, deaf to the worker's pushes).
        self.ring.deafen_reader();
        Some(Leader { lead: self, consumer: Some(consumer), has_news: false })
    }
}

/// A caller reading a worker's replies in its reader's place; dropping it hands back.
pub(crate) struct Leader<'a, C> {
    lead: &'a Lead<C>,
    /// Held from the take-over to the hand-back (`None` only inside `drop`).
    consumer: Option<MutexGuard<'a, C>>,
    has_news: bool,
}

impl<C> Leader<'_, C> {
    /// The reading state, to read with.
    pub(crate) fn consumer(&mut self) -> &mut C {
        self.consumer.as_mut().expect("held until the hand-back")
    }

    /// The reader has something to do at the hand-back that the lane does not show (the caller
    /// found the channel's end or a broken frame): it is woken then.
    pub(crate) fn leave_news(&mut self) {
        self.has_news = true;
    }

    /// With the lane found empty: looks again `spins` times, then sleeps until the worker's next
    /// reply, its hang-up, or `timeout` (`is_interrupted` is looked at, nothing wakes for it);
    /// returns whether the time ran out.
    pub(crate) fn wait(
        &self,
        spins: u32,
        timeout: Option<Duration>,
        is_interrupted: &dyn Fn() -> bool,
    ) -> bool {
        self.lead.ring.wait_reply_leading(spins, timeout, is_interrupted)
    }
}

impl<C> Drop for Leader<'_, C> {
    fn drop(&mut self) {
        let Lead { ring, caller_leads, .. } = self.lead;
        caller_leads.store(false, Ordering::SeqCst);
        seq_cst_handshake();
        // A reader deafened (by the take-over, or by itself) sleeps on: the worker's next push
        // wakes it again. (One that woke meanwhile may find its word set: a needless wake-up
        // later, no harm.)
        ring.rearm_reader();
        seq_cst_handshake();
        // Pairs with the worker's push: either it sees the word set again, or this sees its
        // reply. A reader waiting for the mutex gets it below and looks at everything.
        if self.has_news || ring.has_reply() || ring.has_hung_up() {
            ring.wake_reader();
        }
        drop(self.consumer.take());
    }
}

/// Models of the hand-off between the reader thread and a caller that leads, checked by loom in
/// every interleaving with the worker pushing replies (and hanging up).
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::thread;

    use crate::process::ring::models::{frame, pool_and_worker};

    /// What the consumer of the models records: the bodies read, and by whom.
    #[derive(Default)]
    struct Taken {
        bodies: Vec<(u8, &'static str)>,
        /// The reader saw the end (the worker hung up and the lane is drained).
        has_ended: bool,
    }

    /// One look at the lane by `who`, as `Consumer::step` does: a frame, the end, or empty.
    fn step(ring: &PoolSide, taken: &mut Taken, who: &'static str) -> Option<bool> {
        let mut body = Vec::new();
        if ring.pop_reply(&mut body, 64).expect("a well-behaved worker's lane") {
            taken.bodies.push((body[0], who));
            return Some(true);
        }
        if ring.has_hung_up() {
            // Looked at again after the flag: what was published before the hang-up is in.
            if ring.pop_reply(&mut body, 64).unwrap() {
                taken.bodies.push((body[0], who));
                return Some(true);
            }
            return None;
        }
        Some(false)
    }

    /// The reader thread, as `read_replies` runs it over a lead: until the end, or `count`
    /// frames read by anyone.
    fn reader(lead: &Lead<Taken>, count: usize) {
        loop {
            let mut taken = lead.lock();
            if taken.bodies.len() >= count {
                return;
            }
            match step(&lead.ring, &mut taken, "reader") {
                Some(true) => continue,
                None => {
                    taken.has_ended = true;
                    return;
                }
                Some(false) => {}
            }
            drop(taken);
            lead.reader_wait(0, None);
        }
    }

    /// A caller waiting for frame `mine`: leads if it can, reads until its frame is read (by
    /// anyone) or the worker hung up, then hands back.
    fn caller(lead: &Lead<Taken>, mine: u8) {
        let is_mine = |taken: &Taken| taken.bodies.iter().any(|(n, _)| *n == mine);
        let Some(mut leader) = lead.try_lead(|taken| !is_mine(taken)) else { return };
        loop {
            if is_mine(leader.consumer()) {
                return;
            }
            match step(&lead.ring, leader.consumer(), "caller") {
                Some(true) => continue,
                None => {
                    leader.leave_news();
                    return;
                }
                Some(false) => {
                    leader.wait(0, None, &|| false);
                }
            }
        }
    }

    fn check(taken: &Taken, frames: u8) {
        let read: Vec<u8> = taken.bodies.iter().map(|(n, _)| *n).collect();
        assert_eq!(read, (0..frames).collect::<Vec<_>>(), "each frame once, in order");
    }

    /// A round trip: the worker answers the caller's job; the caller leads while the reader
    /// sleeps on the lane (or reads, or waits for the mutex). The reply is read once, and neither
    /// the caller nor the reader is left asleep (loom fails a model that ends with a thread
    /// blocked). Then a second reply (a job the caller does not wait for) comes after the
    /// hand-back: the reader, deafened by the take-over, must be woken for it.
    #[test]
    fn loom_a_caller_reads_its_reply_and_the_reader_takes_the_next() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (pool, worker) = pool_and_worker();
            let lead = std::sync::Arc::new(Lead::new(pool, Taken::default()));
            let producer = thread::spawn(move || {
                worker.push_reply(&frame(0)).unwrap();
                worker.push_reply(&frame(1)).unwrap();
            });
            let reading = {
                let lead = std::sync::Arc::clone(&lead);
                thread::spawn(move || reader(&lead, 2))
            };
            caller(&lead, 0);
            producer.join().unwrap();
            reading.join().unwrap();
            check(&lead.lock(), 2);
        });
    }

    /// A worker that dies while a caller leads: the hang-up wakes the caller (asleep on its own
    /// word), which hands back with the news; the reader (asleep deafened, or waiting for the
    /// mutex) is woken, drains the lane and sees the end. The reply published before the death
    /// is read once.
    #[test]
    fn loom_a_hang_up_while_a_caller_leads_reaches_both() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (pool, worker) = pool_and_worker();
            let lead =
                std::sync::Arc::new(Lead::new(std::sync::Arc::clone(&pool), Taken::default()));
            let producer = thread::spawn(move || {
                worker.push_reply(&frame(0)).unwrap();
                pool.hang_up();
            });
            let reading = {
                let lead = std::sync::Arc::clone(&lead);
                thread::spawn(move || reader(&lead, usize::MAX))
            };
            // Waits for a reply that never comes: only the hang-up ends its lead.
            caller(&lead, 9);
            producer.join().unwrap();
            reading.join().unwrap();
            let taken = lead.lock();
            check(&taken, 1);
            assert!(taken.has_ended, "the reader saw the end");
        });
    }
}
