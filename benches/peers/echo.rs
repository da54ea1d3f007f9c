//! Raw echo peers: the physical limit of a round trip between two processes, in a few lines of
//! our own and no framework. The peer is the bench binary itself, started again with
//! [`ECHO_ROLE`] in its environment, echoing length-prefixed messages on its stdin and stdout,
//! which are either two pipes or the two ends of one socketpair (what the process backend uses).

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

/// Makes the bench binary, started again with it, an echo peer instead of a bench.
const ECHO_ROLE: &str = "PARALLEL_BENCH_ECHO";

/// Serves as an echo peer until end of input if this process was started as one, and returns
/// whether it was: call it first thing in `main` and return when it says `true`.
pub(crate) fn serve_if_echo_peer() -> bool {
    if std::env::var_os(ECHO_ROLE).is_none() {
        return false;
    }
    // Unbuffered handles on the same descriptors: a message is read and written in as few
    // system calls as it takes, with no line buffering in between.
    let mut input = File::from(
        std::io::stdin().as_fd().try_clone_to_owned().expect("the echo peer has a stdin"),
    );
    let mut output = File::from(
        std::io::stdout().as_fd().try_clone_to_owned().expect("the echo peer has a stdout"),
    );
    // The header and the message, written back in one call; the buffer only grows, so that a
    // large message is not zero-filled again on every round trip.
    let mut buffer = vec![0u8; 8];
    loop {
        if input.read_exact(&mut buffer[..8]).is_err() {
            return true;
        }
        let header: [u8; 8] = buffer[..8].try_into().expect("eight bytes");
        let end = 8 + u64::from_le_bytes(header) as usize;
        if buffer.len() < end {
            buffer.resize(end, 0);
        }
        if input.read_exact(&mut buffer[8..end]).is_err()
            || output.write_all(&buffer[..end]).is_err()
        {
            return true;
        }
    }
}

/// A child process that echoes every message it is sent.
pub(crate) struct EchoPeer {
    child: Child,
    to_peer: File,
    from_peer: File,
}

impl EchoPeer {
    /// Starts an echo peer that talks over two pipes, its stdin and stdout.
    pub(crate) fn over_pipes() -> EchoPeer {
        let mut child = Self::command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the echo peer");
        let to_peer = OwnedFd::from(child.stdin.take().expect("piped stdin"));
        let from_peer = OwnedFd::from(child.stdout.take().expect("piped stdout"));
        EchoPeer { child, to_peer: File::from(to_peer), from_peer: File::from(from_peer) }
    }

    /// Starts an echo peer that talks over one socketpair, as a process-backend worker does.
    pub(crate) fn over_socketpair() -> EchoPeer {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let theirs_too = theirs.try_clone().expect("clone the peer's end");
        let child = Self::command()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(theirs_too)))
            .spawn()
            .expect("start the echo peer");
        let ours_too = ours.try_clone().expect("clone our end");
        EchoPeer {
            child,
            to_peer: File::from(OwnedFd::from(ours)),
            from_peer: File::from(OwnedFd::from(ours_too)),
        }
    }

    fn command() -> Command {
        let mut command = Command::new(std::env::current_exe().expect("the bench's own path"));
        command.env(ECHO_ROLE, "1");
        command
    }

    /// Sends `message` and reads its echo into `back`. The peer reads a whole message before it
    /// echoes it (as a worker reads a whole frame before it runs the task), so writing, then
    /// reading, in one thread is as fast as it gets.
    pub(crate) fn round_trip(&mut self, message: &[u8], back: &mut Vec<u8>) {
        // One system call for the header and the message where the kernel takes them at once.
        let header = (message.len() as u64).to_le_bytes();
        let mut slices = [IoSlice::new(&header), IoSlice::new(message)];
        let mut unsent = &mut slices[..];
        while !unsent.is_empty() {
            let written = self.to_peer.write_vectored(unsent).expect("write to the peer");
            assert!(written > 0, "the echo peer stopped reading");
            IoSlice::advance_slices(&mut unsent, written);
        }
        let mut header = [0u8; 8];
        self.from_peer.read_exact(&mut header).expect("read from the peer");
        back.resize(u64::from_le_bytes(header) as usize, 0);
        self.from_peer.read_exact(back).expect("read from the peer");
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        // The peer holds no state worth a graceful end.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
