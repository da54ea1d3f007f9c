//! Frames too large for a ring (over a quarter of it): each travels in a memory file of its own.
//!
//! The sender writes the frame's body into a fresh memory file, seals it (no one can write,
//! shrink or grow it any more, nor change its seals), sends its descriptor on the socket
//! (`SCM_RIGHTS`), and only then announces it in its ring with an `OnShared { len }` frame, so
//! that frames stay in order and the descriptor is already there when the receiver reads the
//! announcement: the receiver takes it without waiting, and an announcement without one is a
//! protocol error, not a hang. The receiver checks the announced length against the frame limit
//! before it takes the descriptor, then checks the file (a memory file, sealed against shrinking
//! and writing, at least as long as announced) before it maps it read-only, and decodes the frame
//! in place. The descriptor passes ownership: the sender forgets the file once it is sent, the
//! receiver unmaps it once the frame is used, and the kernel frees it then, so there is no reuse
//! of a region to coordinate.
//!
//! Compared with the socket's bytes, which large frames took before protocol 8, this saves two
//! copies per frame (into the socket's buffers and out of them into a frame buffer) and the
//! sender's and receiver's turns at the socket's 200 KiB of buffer: the body is copied once into
//! the file (by `write`, which allocates the file's pages as it fills them) and the value is
//! decoded straight from the mapping.
//!
//! The seals are what make the receiver safe from its peer: without `F_SEAL_SHRINK` the peer
//! could cut the file under the mapping, and a read of a page that is gone is a SIGBUS; without
//! `F_SEAL_WRITE` it could change bytes while they are decoded (a string checked as UTF-8, then
//! changed). A file that lacks them is refused, before it is mapped.

use std::io;
use std::os::unix::net::UnixStream;

use super::protocol::{self, FromWorker, ProtocolError, ReadError, ToWorker};
use super::sys::{self, Received, SealedBytes};

/// The name of the memory files (what `/proc/<pid>/fd` shows).
const NAME: &str = "parallel-frame";

/// Sends the body of `frame` (a whole frame, its length first) in a sealed memory file on
/// `socket`; the caller then pushes [`announce_job`] or [`announce_reply`] into its ring.
///
/// # Errors
///
/// The system's error if the file cannot be made (no memory, no descriptor left) or the socket
/// failed (the other side is gone).
pub(crate) fn send(socket: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let body = frame.get(4..).unwrap_or_default();
    let file = sys::sealed_file(NAME, body)?;
    sys::send_fd(socket, &file).map_err(io::Error::from)
}

/// The job ring's announcement of a frame of `len` bytes (after its length) sent by [`send`].
pub(crate) fn announce_job(len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(16);
    let message = ToWorker::OnShared { len: len as u64 };
    // An announcement is 13 bytes: it fits any limit.
    let _ = protocol::encode_to_worker(&message, &mut frame, usize::MAX);
    frame
}

/// The reply ring's announcement of a frame of `len` bytes (after its length) sent by [`send`].
pub(crate) fn announce_reply(len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(16);
    let message = FromWorker::OnShared { len: len as u64 };
    let _ = protocol::encode_from_worker(&message, &mut frame, usize::MAX);
    frame
}

/// Takes the memory file that an `OnShared { len }` frame announced from `socket` and maps its
/// `len` bytes, the frame's body, read-only.
///
/// # Errors
///
/// A length over `max_frame` (before anything is taken or mapped), an announcement with no
/// descriptor behind it, or a file that is not a memory file, lacks the seals against shrinking
/// and writing, or is shorter than announced: a [`ReadError::Protocol`]. The socket closed:
/// [`ReadError::Closed`]; failed: [`ReadError::Io`].
pub(crate) fn receive(
    socket: &UnixStream,
    len: u64,
    max_frame: usize,
) -> Result<SealedBytes, ReadError> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max_frame {
        return Err(ProtocolError::Oversized { len, max: max_frame }.into());
    }
    match sys::take_fd(socket) {
        Ok(Received::Fd(fd)) => {
            SealedBytes::map(fd, len).map_err(|why| ProtocolError::MemoryFile(why).into())
        }
        Ok(Received::Nothing) => Err(ProtocolError::MemoryFile(
            "announced, but no descriptor came with it on the socket".to_owned(),
        )
        .into()),
        Ok(Received::Closed) => Err(ReadError::Closed),
        Err(error) => Err(ReadError::Io(error)),
    }
}

/// For the property test below and the fuzz target `memory_files`: a hostile worker's reply of
/// `announced` bytes, with on the socket what `shape` picks (bits 0-3: the seals of a memory file
/// holding `bytes`, see [`sys::peer_memory_file`]; bits 4-5: 0 and 1 that file, 2 a pipe, 3 a
/// byte without a descriptor), taken and decoded as the pool's reader takes it, under frame
/// limit `limit`; the worker then tries to cut and overwrite the file while the pool reads every
/// byte of it. Returns whether a frame decoded. Must never panic, fault (SIGBUS), nor map past
/// `limit`.
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
    let Ok(mapped) = receive(&pool, announced, limit) else { return false };
    assert!(mapped.len() <= limit, "mapped {} bytes over the limit of {limit}", mapped.len());
    if let Some(peer) = kept {
        assert!(!sys::try_to_change(&peer), "a file the pool mapped could still change");
    }
    // Every byte is there to read, and what was sent.
    assert_eq!(&mapped[..], &bytes[..mapped.len()]);
    if let Ok(FromWorker::Done {
        reply: protocol::Reply::Output(value) | protocol::Reply::Failed(value),
        ..
    }) = protocol::decode_from_worker(&mapped)
    {
        let _ = protocol::decode_value::<Vec<u8>>(value);
    }
    true
}

#[cfg(test)]
mod tests {
    //! The receiving side's checks, with descriptors a hostile or broken peer could send.

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

    fn refused(result: Result<SealedBytes, ReadError>) -> String {
        match result {
            Err(ReadError::Protocol(error)) => error.to_string(),
            Err(other) => panic!("expected a protocol error, got {other}"),
            Ok(bytes) => panic!("accepted {} bytes", bytes.len()),
        }
    }

    #[test]
    fn a_frame_crosses_whole_and_in_order() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let first: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        send(&ours, &frame_of(&first)).unwrap();
        send(&ours, &frame_of(b"second")).unwrap();
        assert_eq!(&*receive(&theirs, first.len() as u64, 1 << 30).unwrap(), &first[..]);
        assert_eq!(&*receive(&theirs, 6, 1 << 30).unwrap(), b"second");
        // Nothing more: refused at once, not waited for.
        let error = refused(receive(&theirs, 6, 1 << 30));
        assert!(error.contains("no descriptor came"), "{error}");
        drop(ours);
        assert!(matches!(receive(&theirs, 6, 1 << 30), Err(ReadError::Closed)));
    }

    #[test]
    fn the_announcements_decode_to_the_length() {
        let job = announce_job(300 << 10);
        let body = &job[4..];
        assert_eq!(protocol::decode_to_worker(body), Ok(ToWorker::OnShared { len: 300 << 10 }));
        let reply = announce_reply(5 << 30);
        assert_eq!(
            protocol::decode_from_worker(&reply[4..]),
            Ok(FromWorker::OnShared { len: 5 << 30 })
        );
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_taking_the_descriptor() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        send(&ours, &frame_of(&[7; 100])).unwrap();
        match receive(&theirs, 100, 99) {
            Err(ReadError::Protocol(ProtocolError::Oversized { len: 100, max: 99 })) => {}
            other => panic!("{:?}", other.map(|bytes| bytes.len())),
        }
        // The descriptor is still there: nothing was taken.
        assert!(matches!(sys::take_fd(&theirs), Ok(Received::Fd(_))));
    }

    #[test]
    fn an_unsealed_file_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        for seals in [0, SHRINK, WRITE, GROW | SEAL, SHRINK | GROW | SEAL, WRITE | GROW | SEAL] {
            sys::send_fd(&ours, &memory_file(&[1; 64], seals)).unwrap();
            let error = refused(receive(&theirs, 64, 1 << 20));
            assert!(error.contains("not sealed against shrinking and writing"), "{seals}: {error}");
        }
        // Both seals, without the others: accepted.
        sys::send_fd(&ours, &memory_file(&[1; 64], SHRINK | WRITE)).unwrap();
        assert_eq!(&*receive(&theirs, 64, 1 << 20).unwrap(), &[1; 64]);
    }

    #[test]
    fn a_file_shorter_than_announced_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        send(&ours, &frame_of(&[3; 4096])).unwrap();
        let error = refused(receive(&theirs, 4097, 1 << 20));
        assert!(error.contains("holds 4096 bytes, 4097 announced"), "{error}");
        // An empty announcement maps nothing.
        send(&ours, &frame_of(&[])).unwrap();
        let error = refused(receive(&theirs, 0, 1 << 20));
        assert!(error.contains("empty"), "{error}");
    }

    #[test]
    fn a_descriptor_of_another_kind_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (pipe, _writer) = sys::pipe().unwrap();
        sys::send_fd(&ours, &pipe).unwrap();
        let error = refused(receive(&theirs, 1, 1 << 20));
        assert!(error.contains("no memory file"), "{error}");
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        sys::send_fd(&ours, &OwnedFd::from(file)).unwrap();
        let error = refused(receive(&theirs, 1, 1 << 20));
        assert!(error.contains("no memory file"), "{error}");
    }

    #[test]
    fn a_byte_without_a_descriptor_is_refused() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        ours.write_all(&[0]).unwrap();
        let error = refused(receive(&theirs, 1, 1 << 20));
        assert!(error.contains("no descriptor came"), "{error}");
    }

    proptest! {
        /// Whatever a worker sends, the pool refuses it or reads every byte of it, and the worker
        /// cannot change a file the pool accepted (a cut would fault the pool's read).
        #[test]
        fn hostile_memory_files_are_refused_or_safe(
            bytes in proptest::collection::vec(any::<u8>(), 0..9000),
            announced in prop_oneof![0u64..10_000, any::<u64>()],
            shape in any::<u8>(),
            limit in prop_oneof![Just(usize::MAX), 0usize..10_000],
        ) {
            let decoded = hostile(&bytes, announced, shape, limit);
            let sealed = shape & (SHRINK | WRITE) == SHRINK | WRITE;
            let fits = announced > 0 && announced <= bytes.len() as u64 && announced as usize <= limit;
            prop_assert_eq!(decoded, shape >> 4 & 3 < 2 && sealed && fits);
        }
    }
}
