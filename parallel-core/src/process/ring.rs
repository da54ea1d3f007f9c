//! The worker's replies in shared memory: a single-producer, single-consumer ring of frames, in
//! two halves whose types say who writes what: the worker's [`Producer`] pushes replies and
//! starts jobs through their claims, the pool's [`Consumer`] pops replies and stops jobs.
//!
//! A reply must leave the worker before the worker starts its next job: a reply still inside a
//! worker that the next job crashes is lost, and the pool would blame the job that finished and
//! run the crashing one again elsewhere. Writing each reply to the socket costs a system call and
//! usually a wake-up of the pool's reader per task. A reply copied into memory shared with the
//! pool is out of the worker just as surely (the pool's mapping outlives the worker), for the cost
//! of a copy: the worker writes the frame, then publishes it by moving `head`; the pool copies it
//! out, then moves `tail`. The socket then carries only what the ring cannot:
//!
//! - a wake-up (`Wake`), written only when the pool's reader found the ring empty and went to
//!   sleep on the socket, so a busy pool reads replies with no system call at all;
//! - replies too large for the ring, announced in the ring by an `OnSocket` frame so that replies
//!   stay in order.
//!
//! The same shared page carries the claims of the jobs sent to the worker (see [`super::claim`]):
//! one word per job in flight, through which the worker starts a job and the pool stops one.
//!
//! The worker is untrusted: `head`, the lengths and the bytes it writes are checked by the pool
//! like any frame from a socket, and a ring that breaks the rules is a protocol error for that
//! worker, never a panic or an allocation larger than the frame limit.

#[cfg(not(all(test, loom)))]
use std::os::fd::{AsFd, OwnedFd};
#[cfg(not(all(test, loom)))]
use std::time::Duration;

use super::claim::{Claims, CLAIM_WORDS};
use super::protocol::ProtocolError;
#[cfg(not(all(test, loom)))]
use super::sys::SharedMemory;
#[cfg(all(test, loom))]
use crate::sync::SharedMemory;
use crate::sync::{seq_cst_handshake, AtomicU64, Ordering};

/// The bytes of frames a ring holds; frames over a quarter of it go through the socket.
#[cfg(not(all(test, loom)))]
pub(crate) const CAPACITY: usize = 1 << 20;
/// Under loom, room for four frames of 6 bytes, so that a model of a few frames wraps around and
/// waits for room.
#[cfg(all(test, loom))]
pub(crate) const CAPACITY: usize = 24;
/// The control words at the start of the shared mapping, each on a cache line of its own
/// (eight words apart) where both sides write them often.
///
/// Bytes of frames published by the worker, ever (wraps at `u64::MAX`, never in practice).
const HEAD: usize = 0;
/// Bytes of frames consumed by the pool, ever.
const TAIL: usize = 8;
/// 1 while the pool's reader waits on the socket for a `Wake`.
const ASLEEP: usize = 16;
/// How many jobs the worker has started, ever: what its standard error was written during.
const STARTED: usize = 24;
/// One word per job in flight: whether it may start, started, or was stopped.
const CLAIMS_AT: usize = 32;
/// The words the control area holds: four pages.
const WORDS: usize = 2048;
const _: () = assert!(CLAIMS_AT + CLAIM_WORDS <= WORDS);

/// The mapping both halves share: control words, then the frames.
struct Mapping {
    memory: SharedMemory,
}

impl Mapping {
    fn word(&self, index: usize) -> &AtomicU64 {
        &self.memory.words()[index]
    }

    /// The claims of the jobs sent to the worker, shared by both sides.
    fn claims(&self) -> &Claims {
        let claims = &self.memory.words()[CLAIMS_AT..CLAIMS_AT + CLAIM_WORDS];
        claims.try_into().expect("the claims are `CLAIM_WORDS` words: a constant range")
    }

    /// How many jobs the worker has started: it bumps the count as it starts each one.
    fn started(&self) -> &AtomicU64 {
        self.word(STARTED)
    }
}

/// The pool's half of a ring: it consumes the worker's replies, and moves claims to stop jobs.
pub(crate) struct Consumer {
    mapping: Mapping,
}

/// The worker's half of a ring: it produces replies, and moves claims to start jobs.
pub(crate) struct Producer {
    mapping: Mapping,
}

impl Consumer {
    /// Creates a ring in a fresh memory file; the descriptor is for the worker to map.
    #[cfg(not(all(test, loom)))]
    pub(crate) fn create() -> Result<(Consumer, OwnedFd), String> {
        let (memory, fd) = SharedMemory::create("parallel-replies", WORDS, CAPACITY)?;
        Ok((Consumer { mapping: Mapping { memory } }, fd))
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        self.mapping.word(index)
    }

    fn memory(&self) -> &SharedMemory {
        &self.mapping.memory
    }

    /// The pool's side: copies the next frame's body (after its length) into `body`; `false` if
    /// the ring is empty.
    pub(crate) fn pop(&self, body: &mut Vec<u8>, max_frame: usize) -> Result<bool, ProtocolError> {
        let tail = self.word(TAIL).load(Ordering::Relaxed);
        let head = self.word(HEAD).load(Ordering::Acquire);
        let published = head.wrapping_sub(tail);
        if published == 0 {
            return Ok(false);
        }
        if published > CAPACITY as u64 || published < 4 {
            return Err(ProtocolError::Malformed("reply ring: a position out of bounds"));
        }
        let mut header = [0u8; 4];
        self.copy_out(tail, &mut header);
        let len = u32::from_le_bytes(header) as usize;
        if len > max_frame {
            return Err(ProtocolError::Oversized { len, max: max_frame });
        }
        if (4 + len) as u64 > published {
            return Err(ProtocolError::Malformed("reply ring: a frame beyond the published bytes"));
        }
        body.clear();
        body.resize(len, 0);
        self.copy_out(tail.wrapping_add(4), body);
        self.word(TAIL).store(tail.wrapping_add(4 + len as u64), Ordering::Release);
        Ok(true)
    }

    /// Copies `out.len()` bytes from ring position `at` (within the published bytes).
    fn copy_out(&self, at: u64, out: &mut [u8]) {
        // The bytes are published and belong to this side until `tail` moves past them; a worker
        // that writes them anyway can only garble this copy, which is then checked like any bytes
        // from a worker.
        let start = at as usize % CAPACITY;
        let first = out.len().min(CAPACITY - start);
        let (wrapped, rest) = out.split_at_mut(first);
        self.memory().copy_out(start, wrapped);
        self.memory().copy_out(0, rest);
    }

    /// The pool's reader is about to wait on the socket: `false` if a frame came in meanwhile
    /// (then it must not wait). After `true`, the worker writes a `Wake` for its next frame.
    pub(crate) fn sleep(&self) -> bool {
        let asleep = self.word(ASLEEP);
        asleep.store(1, Ordering::SeqCst);
        seq_cst_handshake();
        let tail = self.word(TAIL).load(Ordering::Relaxed);
        if self.word(HEAD).load(Ordering::SeqCst) == tail {
            return true;
        }
        // A frame came in after all. If the worker took the flag, its `Wake` is on the way and
        // is read later as a spurious one.
        asleep.store(0, Ordering::SeqCst);
        false
    }

    /// The claims of the jobs sent to the worker.
    pub(crate) fn claims(&self) -> &Claims {
        self.mapping.claims()
    }

    /// How many jobs the worker has started.
    pub(crate) fn started(&self) -> &AtomicU64 {
        self.mapping.started()
    }
}

impl Producer {
    /// Maps the ring the pool created (the worker's side), from its descriptor.
    #[cfg(not(all(test, loom)))]
    pub(crate) fn map(fd: impl AsFd) -> Result<Producer, String> {
        Ok(Producer { mapping: Mapping { memory: SharedMemory::map(fd, WORDS, CAPACITY)? } })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        self.mapping.word(index)
    }

    fn memory(&self) -> &SharedMemory {
        &self.mapping.memory
    }

    /// Whether a frame of `len` bytes goes through the ring (else through the socket).
    pub(crate) fn fits(&self, len: usize) -> bool {
        len <= CAPACITY / 4
    }

    /// The worker's side: copies `frame` (a whole frame, length included, that [`Producer::fits`])
    /// into the ring, waiting for room, and publishes it. Returns whether the pool's reader is
    /// asleep and must be woken through the socket.
    pub(crate) fn push(&self, frame: &[u8]) -> bool {
        debug_assert!(self.fits(frame.len()));
        let (head, tail, asleep) = (self.word(HEAD), self.word(TAIL), self.word(ASLEEP));
        let at = head.load(Ordering::Relaxed);
        let mut waited = 0u32;
        // Room comes back as the pool consumes; a pool that stopped consuming kills this worker.
        while CAPACITY - (at.wrapping_sub(tail.load(Ordering::Acquire)) as usize) < frame.len() {
            back_off(&mut waited);
        }
        // The bytes from `head` on are free (checked above) and belong to this side until
        // `head` moves past them.
        let start = at as usize % CAPACITY;
        let first = frame.len().min(CAPACITY - start);
        self.memory().copy_in(start, &frame[..first]);
        self.memory().copy_in(0, &frame[first..]);
        head.store(at.wrapping_add(frame.len() as u64), Ordering::SeqCst);
        seq_cst_handshake();
        // Pairs with `sleep`: either the reader sees the new head, or this sees it asleep.
        asleep.load(Ordering::SeqCst) == 1 && asleep.swap(0, Ordering::SeqCst) == 1
    }

    /// The claims of the jobs sent to this worker.
    pub(crate) fn claims(&self) -> &Claims {
        self.mapping.claims()
    }

    /// How many jobs this worker has started: it bumps the count as it starts each one.
    pub(crate) fn started(&self) -> &AtomicU64 {
        self.mapping.started()
    }
}

/// Waits a little longer each time: spins, then yields, then sleeps.
#[cfg(not(all(test, loom)))]
fn back_off(waited: &mut u32) {
    *waited += 1;
    match *waited {
        0..=64 => std::hint::spin_loop(),
        65..=128 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(50)),
    }
}

/// Under loom, waiting lets the other side run.
#[cfg(all(test, loom))]
fn back_off(_: &mut u32) {
    ::loom::thread::yield_now();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::alloc_probe::largest_allocation;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    /// Two mappings of one memory file, as the pool and its worker have.
    fn pair() -> (Consumer, Producer) {
        let (pool, fd) = Consumer::create().unwrap();
        let worker = Producer::map(&fd).unwrap();
        (pool, worker)
    }

    #[test]
    fn frames_cross_in_order_and_wrap_around() {
        let (pool, worker) = pair();
        let mut body = Vec::new();
        // 1000 frames of up to 100 KiB: the positions wrap around the 1 MiB ring many times.
        for round in 0..1000usize {
            let payload: Vec<u8> =
                (0..(round * 7919) % (100 << 10)).map(|i| (i + round) as u8).collect();
            worker.push(&frame(&payload));
            assert!(pool.pop(&mut body, 1 << 20).unwrap());
            assert_eq!(body, payload, "frame {round}");
        }
        assert!(!pool.pop(&mut body, 1 << 20).unwrap());
    }

    #[test]
    fn the_worker_wakes_the_pool_only_when_it_sleeps() {
        let (pool, worker) = pair();
        let mut body = Vec::new();
        assert!(!worker.push(&frame(b"a")), "the reader is awake");
        assert!(!pool.sleep(), "a frame is waiting: no sleep");
        assert!(pool.pop(&mut body, 64).unwrap());
        assert!(pool.sleep());
        assert!(worker.push(&frame(b"b")), "the reader sleeps: wake it");
        assert!(!worker.push(&frame(b"c")), "woken once");
    }

    #[test]
    fn a_full_ring_makes_the_worker_wait_for_the_pool() {
        let (pool, worker) = pair();
        let big = frame(&vec![7u8; CAPACITY / 4 - 4]);
        for _ in 0..4 {
            worker.push(&big);
        }
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut body = Vec::new();
            let mut frames = 0;
            while frames < 5 {
                if pool.pop(&mut body, 1 << 20).unwrap() {
                    frames += 1;
                }
            }
            body
        });
        // Blocks until the consumer frees a quarter of the ring.
        worker.push(&frame(b"last"));
        assert_eq!(consumer.join().unwrap(), b"last");
    }

    #[test]
    fn claims_are_shared_across_the_mappings() {
        use crate::process::claim::{self, Claim};
        let (pool, worker) = pair();
        claim::publish(claim::slot(pool.claims(), 300), 300);
        assert_eq!(claim::start(claim::slot(worker.claims(), 300), 300), Ok(true));
        assert_eq!(claim::read(claim::slot(pool.claims(), 300), 300), Claim::Started);
    }

    /// Sets the raw state of a ring as a hostile worker could.
    fn forge(ring: &Consumer, head: u64, tail: u64, bytes: &[u8]) {
        ring.word(HEAD).store(head, Ordering::SeqCst);
        ring.word(TAIL).store(tail, Ordering::SeqCst);
        let start = tail as usize % CAPACITY;
        let n = bytes.len().min(CAPACITY - start);
        ring.memory().copy_in(start, &bytes[..n]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_hostile_worker_cannot_make_the_pool_panic_or_overallocate(
            head in any::<u64>(),
            tail in any::<u64>(),
            near in 0u64..64,
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            const LIMIT: usize = 4096;
            let (pool, _worker) = pair();
            // Positions anywhere, and positions close together (a plausible but lying state).
            for head in [head, tail.wrapping_add(near)] {
                forge(&pool, head, tail, &bytes);
                let mut body = Vec::new();
                let (_, largest) = largest_allocation(|| {
                    for _ in 0..4 {
                        if !matches!(pool.pop(&mut body, LIMIT), Ok(true)) {
                            break;
                        }
                    }
                });
                prop_assert!(largest <= LIMIT, "allocated {largest} bytes");
            }
        }
    }
}

/// Models of the ring's positions and the reader's sleep, checked by loom in every interleaving
/// over heap memory (see `crate::sync`).
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::sync::{Arc, Condvar, Mutex};
    use ::loom::thread;

    /// Both halves of one ring whose positions start at `at` (bytes that went through it before).
    fn pair(at: u64) -> (Consumer, Producer) {
        let memory = SharedMemory::new(WORDS, CAPACITY);
        memory.words()[HEAD].store(at, Ordering::Relaxed);
        memory.words()[TAIL].store(at, Ordering::Relaxed);
        let consumer = Consumer { mapping: Mapping { memory: memory.clone() } };
        (consumer, Producer { mapping: Mapping { memory } })
    }

    /// Frame `n`: 6 bytes, the most a ring of `CAPACITY` bytes takes (a quarter).
    fn frame(n: u8) -> Vec<u8> {
        vec![2, 0, 0, 0, n, !n]
    }

    /// The socket, as far as the sleep protocol uses it: the `Wake` frames on it.
    #[derive(Default)]
    struct Socket {
        wakes: Mutex<usize>,
        readable: Condvar,
    }

    impl Socket {
        fn write_wake(&self) {
            *self.wakes.lock().unwrap() += 1;
            self.readable.notify_one();
        }

        /// Blocks until a `Wake` comes, and reads it.
        fn read_wake(&self) {
            let mut wakes = self.wakes.lock().unwrap();
            while *wakes == 0 {
                wakes = self.readable.wait(wakes).unwrap();
            }
            *wakes -= 1;
        }
    }

    /// The worker's side: pushes `frames`, writing a `Wake` when the reader sleeps.
    fn produce(ring: Producer, socket: Arc<Socket>, frames: std::ops::Range<u8>) {
        for n in frames {
            if ring.push(&frame(n)) {
                socket.write_wake();
            }
        }
    }

    /// The pool's reader, as `read_replies` runs it: pops while there are frames, sleeps on the
    /// socket when the ring is empty, until it has `count` frames.
    fn consume(ring: &Consumer, socket: &Socket, count: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut body = Vec::new();
        while frames.len() < count {
            if ring.pop(&mut body, 64).expect("a well-behaved worker's ring") {
                frames.push(body.clone());
            } else if ring.sleep() {
                socket.read_wake();
            }
        }
        frames
    }

    fn bodies(frames: std::ops::Range<u8>) -> Vec<Vec<u8>> {
        frames.map(|n| frame(n)[4..].to_vec()).collect()
    }

    /// One worker pushing three frames (the second wraps around the end of the ring) while the
    /// reader pops and sleeps: every frame arrives once, in order, and a sleeping reader is
    /// always woken (a reader left asleep is a deadlock, which fails the model). Loom also fails
    /// the model if either side copies a byte while the other owns it.
    #[test]
    fn loom_the_reader_sleeps_and_is_woken_without_losing_a_frame() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (consumer, producer) = pair(CAPACITY as u64 - 8);
            let socket = Arc::new(Socket::default());
            let worker = {
                let socket = Arc::clone(&socket);
                thread::spawn(move || produce(producer, socket, 0..3))
            };
            assert_eq!(consume(&consumer, &socket, 3), bodies(0..3));
            worker.join().unwrap();
            assert!(!consumer.pop(&mut Vec::new(), 64).unwrap(), "no frame twice");
        });
    }

    /// A full ring: the worker waits for the reader to free room (its fifth frame needs the
    /// first one's bytes), and frames still cross once and in order.
    #[test]
    fn loom_a_full_ring_makes_the_worker_wait_without_losing_a_frame() {
        let mut model = ::loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let (consumer, producer) = pair(CAPACITY as u64 - 8);
            for n in 0..3 {
                assert!(!producer.push(&frame(n)));
            }
            let socket = Arc::new(Socket::default());
            let worker = {
                let socket = Arc::clone(&socket);
                thread::spawn(move || produce(producer, socket, 3..5))
            };
            assert_eq!(consume(&consumer, &socket, 5), bodies(0..5));
            worker.join().unwrap();
            assert!(!consumer.pop(&mut Vec::new(), 64).unwrap(), "no frame twice");
        });
    }
}
