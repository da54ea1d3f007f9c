//! Frames too large for a ring (over a quarter of it): each lane has a region for them, a memory
//! file mapped by both sides, which holds one such frame at a time.
//!
//! The sender of a lane creates the region (`memfd_create`, sized to the next power of two of the
//! frame, at least 1 MiB, sparse until written), seals it against shrinking and growing, maps it
//! and sends its descriptor on the socket (`SCM_RIGHTS`) the first time, and again whenever a
//! frame needs a larger one. For each large frame it waits until the receiver has taken the one
//! before (a counter of frames taken, in the rings' shared page), writes the frame's body at the
//! region's start, and announces it in the ring with an `OnShared { len, fresh }` frame, so that
//! frames stay in order; `fresh` says that a new region's descriptor is on the socket, sent
//! before the announcement, so the receiver takes it without waiting. The receiver checks the
//! length against the frame limit, maps a fresh region read-only after checking it (a memory file,
//! sealed against shrinking, no larger than the largest region a frame under the limit needs),
//! copies the frame out, and stores the new count of frames taken: the region is the sender's
//! again. Both sides drop a region over 64 MiB after its frame, so that one huge value does not
//! hold that much shared memory for the worker's life.
//!
//! Against the socket's bytes, which large frames took before protocol 8, this saves the system
//! calls and the turns of both sides at the socket's 200 KiB of buffer, and the memory it copies
//! through is the same from one frame to the next, its pages in place: on the machine measured,
//! a fresh memory file per frame cost more than the socket (allocating, charging and freeing
//! 4096 pages for 16 MiB: 7 to 10 ms to fill one, 4 to 5 ms to free it).
//!
//! The seal against shrinking is what keeps the pool safe from its worker: a file cut under the
//! pool's mapping would fault (SIGBUS) on the next read of a lost page. A worker can still write
//! its region at any time, so the pool copies a frame out before it looks at it, as it does from
//! the ring: a race only garbles bytes, which are then checked like any others.

use std::io;
use std::os::unix::net::UnixStream;

use super::protocol::{ProtocolError, ReadError};
use super::sys::{self, Received, Region};

/// The name of the regions' memory files (what `/proc/<pid>/fd` shows).
const NAME: &str = "parallel-frames";
/// The smallest region: a frame just over a ring's share (256 KiB) fits, and the next ones.
const MIN_REGION: usize = 1 << 20;
/// The largest region kept after its frame, by both sides.
const KEPT_REGION: usize = 64 << 20;

/// The size of the region a frame body of `len` bytes gets.
fn region_len(len: usize) -> usize {
    len.checked_next_power_of_two().unwrap_or(usize::MAX).max(MIN_REGION)
}

/// The sending side of a lane's region.
#[derive(Default)]
pub(crate) struct Sender {
    region: Option<Region>,
    /// Large frames written to the lane's regions, ever.
    sent: u64,
}

impl Sender {
    /// Writes the body of `frame` (a whole frame, its length first) to the lane's region, once
    /// `wait_taken(sent)` has returned (the receiver took the `sent` frames before: it is the
    /// sender's to write), creating a region and sending its descriptor on `socket` first if
    /// there is none or it is too small. Returns what the announcement to push into the ring
    /// says: the body's length and whether the region is new.
    ///
    /// # Errors
    ///
    /// `wait_taken`'s error, or the system's if a region cannot be made (no memory, no
    /// descriptor left) or the socket failed (the other side is gone).
    pub(crate) fn send(
        &mut self,
        socket: &UnixStream,
        frame: &[u8],
        wait_taken: impl FnOnce(u64) -> io::Result<()>,
    ) -> io::Result<(u64, bool)> {
        let body = frame.get(4..).unwrap_or_default();
        wait_taken(self.sent)?;
        let fresh = self.region.as_ref().is_none_or(|region| region.len() < body.len());
        if fresh {
            // The old one first: its memory goes back before the new one takes any.
            self.region = None;
            let (region, fd) = Region::create(NAME, region_len(body.len()))?;
            sys::send_fd(socket, &fd).map_err(io::Error::from)?;
            self.region = Some(region);
        }
        let region = self.region.as_ref().expect("a region was made above if there was none");
        region.write(body);
        self.sent += 1;
        if region.len() > KEPT_REGION {
            self.region = None;
        }
        Ok((body.len() as u64, fresh))
    }
}

/// The receiving side of a lane's region.
#[derive(Default)]
pub(crate) struct Receiver {
    region: Option<Region>,
    /// Large frames copied out of the lane's regions, ever.
    taken: u64,
}

impl Receiver {
    /// Copies the frame an `OnShared { len, fresh }` announced into `body` (its bytes after the
    /// length), taking a new region's descriptor from `socket` first if `fresh`, then hands the
    /// region back with `release(taken)`.
    ///
    /// # Errors
    ///
    /// A length over `max_frame` (before anything is taken or mapped), a fresh region whose
    /// descriptor is not on the socket, a region that is not a memory file, lacks the seal
    /// against shrinking or is larger than a frame under the limit needs, a frame announced
    /// without a region or longer than its region: a [`ReadError::Protocol`]. The socket closed:
    /// [`ReadError::Closed`]; failed: [`ReadError::Io`].
    pub(crate) fn receive(
        &mut self,
        socket: &UnixStream,
        (len, fresh): (u64, bool),
        max_frame: usize,
        body: &mut Vec<u8>,
        release: impl FnOnce(u64),
    ) -> Result<(), ReadError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > max_frame {
            return Err(ProtocolError::Oversized { len, max: max_frame }.into());
        }
        if fresh {
            self.region = None;
            let fd = match sys::take_fd(socket) {
                Ok(Received::Fd(fd)) => fd,
                Ok(Received::Nothing) => {
                    return Err(broken(
                        "a new region was announced, but its descriptor is not on the socket"
                            .to_owned(),
                    ))
                }
                Ok(Received::Closed) => return Err(ReadError::Closed),
                Err(error) => return Err(ReadError::Io(error)),
            };
            let region = Region::map_received(fd, region_len(max_frame)).map_err(broken)?;
            self.region = Some(region);
        }
        let Some(region) = self.region.as_ref() else {
            return Err(broken("a frame was announced in a region never sent".to_owned()));
        };
        if len > region.len() {
            return Err(broken(format!(
                "a frame of {len} bytes was announced in a region of {} bytes",
                region.len()
            )));
        }
        region.read(len, body);
        self.taken += 1;
        release(self.taken);
        if region.len() > KEPT_REGION {
            self.region = None;
        }
        Ok(())
    }
}

fn broken(why: String) -> ReadError {
    ProtocolError::MemoryFile(why).into()
}

/// For the property test below and the fuzz target `memory_files`: a hostile worker's large
/// reply of `announced` bytes in a fresh region, with on the socket what `shape` picks (bits 0-3:
/// the seals of a memory file holding `bytes`, see [`sys::peer_memory_file`]; bits 4-5: 0 and 1
/// that file, 2 a pipe, 3 a byte without a descriptor), taken as the pool's reader takes it,
/// under frame limit `limit`; the worker then tries to cut the file, and the pool reads the
/// frame again from the region it kept. Returns whether a frame was taken. Must never panic,
/// fault (SIGBUS), nor take more than `limit` bytes.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn hostile(bytes: &[u8], announced: u64, shape: u8, limit: usize) -> bool {
    use std::io::Write;
    let (worker, pool) = UnixStream::pair().expect("a socket pair");
    let mut kept = None;
    match shape >> 4 & 3 {
        0 | 1 => {
            let (file, peer) = sys::peer_memory_file(bytes, shape & 15).expect("a memory file");
            sys::send_fd(&worker, &file).expect("room for one descriptor");
            kept = Some(peer);
        }
        2 => {
            let (pipe, _writer) = sys::pipe().expect("a pipe");
            sys::send_fd(&worker, &pipe).expect("room for one descriptor");
        }
        _ => (&worker).write_all(&[0]).expect("room for one byte"),
    }
    let mut receiver = Receiver::default();
    let mut body = Vec::new();
    let mut released = 0;
    if receiver.receive(&pool, (announced, true), limit, &mut body, |n| released = n).is_err() {
        return false;
    }
    assert_eq!(released, 1, "the region is handed back");
    assert!(body.len() <= limit, "took {} bytes over the limit of {limit}", body.len());
    assert_eq!(&body[..], &bytes[..body.len()], "the frame as written");
    if let Some(peer) = kept {
        assert!(!sys::try_to_cut(&peer), "a region the pool mapped could still be cut");
    }
    // The region is kept for the next frame: reading it after the cut attempt must not fault.
    let again = receiver.receive(&pool, (announced, false), limit, &mut body, |n| released = n);
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(released, 2);
    true
}

#[cfg(test)]
mod tests {
    //! Frames through a lane's region, and the receiving side's checks with the descriptors a
    //! hostile or broken peer could send.

    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    }

    /// A memory file of `bytes` with seals `seals` (see [`sys::peer_memory_file`]).
    fn memory_file(bytes: &[u8], seals: u8) -> OwnedFd {
        sys::peer_memory_file(bytes, seals).unwrap().0
    }

    const SHRINK: u8 = 1;
    const GROW: u8 = 2;
    const WRITE: u8 = 4;
    const SEAL: u8 = 8;

    /// Takes a frame of `len` bytes announced in a fresh region, as the pool's reader does.
    fn take(socket: &UnixStream, len: u64, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        Receiver::default().receive(socket, (len, true), max, &mut body, |_| {}).map(|()| body)
    }

    fn refused(result: Result<Vec<u8>, ReadError>) -> String {
        match result {
            Err(ReadError::Protocol(error)) => error.to_string(),
            Err(other) => panic!("expected a protocol error, got {other}"),
            Ok(bytes) => panic!("accepted {} bytes", bytes.len()),
        }
    }

    #[test]
    fn frames_cross_whole_and_in_order_reusing_the_region_until_one_needs_more() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (mut sender, mut receiver) = (Sender::default(), Receiver::default());
        let taken = std::cell::Cell::new(0);
        let mut body = Vec::new();
        let bodies: Vec<Vec<u8>> = [1 << 20, 6, 300 << 10, 3 << 20, 5]
            .iter()
            .enumerate()
            .map(|(n, len)| (0..*len).map(|i| (i % 251) as u8 ^ n as u8).collect())
            .collect();
        for (n, sent) in bodies.iter().enumerate() {
            let wait = |count| {
                // The receiver took every frame before: the sender may write.
                assert_eq!(taken.get(), count, "frame {n} waited for the frames before it");
                Ok(())
            };
            let announced = sender.send(&ours, &frame_of(sent), wait).unwrap();
            assert_eq!(announced, (sent.len() as u64, n == 0 || n == 3), "frame {n}");
            receiver.receive(&theirs, announced, 1 << 30, &mut body, |n| taken.set(n)).unwrap();
            assert!(body == *sent, "frame {n} came out changed");
            assert_eq!(taken.get(), n as u64 + 1);
        }
        // Two regions were sent, no more: nothing else is on the socket.
        assert!(matches!(sys::take_fd(&theirs), Ok(Received::Nothing)));
    }

    #[test]
    fn a_fresh_region_without_its_descriptor_is_refused_at_once() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let error = refused(take(&theirs, 6, 1 << 30));
        assert!(error.contains("its descriptor is not on the socket"), "{error}");
        let error = refused(
            Receiver::default()
                .receive(&theirs, (6, false), 1 << 30, &mut Vec::new(), |_| {})
                .map(|()| Vec::new()),
        );
        assert!(error.contains("a region never sent"), "{error}");
        drop(ours);
        assert!(matches!(take(&theirs, 6, 1 << 30), Err(ReadError::Closed)));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_taking_the_descriptor() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        sys::send_fd(&ours, &memory_file(&[7; 100], SHRINK)).unwrap();
        match take(&theirs, 100, 99) {
            Err(ReadError::Protocol(ProtocolError::Oversized { len: 100, max: 99 })) => {}
            other => panic!("{:?}", other.map(|bytes| bytes.len())),
        }
        // The descriptor is still there: nothing was taken.
        assert!(matches!(sys::take_fd(&theirs), Ok(Received::Fd(_))));
    }

    #[test]
    fn a_file_not_sealed_against_shrinking_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        for seals in [0, GROW, WRITE, GROW | WRITE | SEAL] {
            sys::send_fd(&ours, &memory_file(&[1; 64], seals)).unwrap();
            let error = refused(take(&theirs, 64, 1 << 20));
            assert!(error.contains("not sealed against shrinking"), "{seals}: {error}");
        }
        // That seal alone is enough.
        sys::send_fd(&ours, &memory_file(&[1; 64], SHRINK)).unwrap();
        assert_eq!(take(&theirs, 64, 1 << 20).unwrap(), [1; 64]);
    }

    #[test]
    fn a_region_shorter_than_its_frame_or_larger_than_the_limit_needs_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        sys::send_fd(&ours, &memory_file(&[3; 4096], SHRINK)).unwrap();
        let error = refused(take(&theirs, 4097, 1 << 20));
        assert!(error.contains("4097 bytes was announced in a region of 4096 bytes"), "{error}");
        sys::send_fd(&ours, &memory_file(&[], SHRINK)).unwrap();
        let error = refused(take(&theirs, 0, 1 << 20));
        assert!(error.contains("holds 0 bytes"), "{error}");
        // A frame under 1000 bytes needs a region of 1 MiB at most.
        sys::send_fd(&ours, &memory_file(&vec![3; (1 << 20) + 1], SHRINK)).unwrap();
        let error = refused(take(&theirs, 10, 1000));
        assert!(error.contains("holds 1048577 bytes, not 1 to 1048576"), "{error}");
    }

    #[test]
    fn a_descriptor_of_another_kind_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (pipe, _writer) = sys::pipe().unwrap();
        sys::send_fd(&ours, &pipe).unwrap();
        let error = refused(take(&theirs, 1, 1 << 20));
        assert!(error.contains("no memory file"), "{error}");
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        sys::send_fd(&ours, &OwnedFd::from(file)).unwrap();
        let error = refused(take(&theirs, 1, 1 << 20));
        assert!(error.contains("no memory file"), "{error}");
    }

    #[test]
    fn a_byte_without_a_descriptor_is_refused() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(&[0]).unwrap();
        let error = refused(take(&theirs, 1, 1 << 20));
        assert!(error.contains("its descriptor is not on the socket"), "{error}");
    }

    proptest! {
        /// Whatever a worker sends, the pool refuses it or takes the frame whole, and the worker
        /// cannot cut a region the pool mapped (which would fault the pool's next read).
        #[test]
        fn hostile_regions_are_refused_or_safe(
            bytes in proptest::collection::vec(any::<u8>(), 0..9000),
            announced in prop_oneof![0u64..10_000, any::<u64>()],
            shape in any::<u8>(),
            limit in prop_oneof![Just(usize::MAX), 0usize..10_000],
        ) {
            let taken = hostile(&bytes, announced, shape, limit);
            let is_file = shape >> 4 & 3 < 2;
            let sealed = shape & SHRINK != 0;
            let fits = !bytes.is_empty()
                && announced <= bytes.len() as u64
                && announced as usize <= limit;
            prop_assert_eq!(taken, is_file && sealed && fits);
        }
    }
}
