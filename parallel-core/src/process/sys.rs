//! The platform layer: every system call and every `unsafe` block the process backend needs that
//! has no safe std wrapper — memory shared with a worker, descriptor passing, the worker's
//! start-up in place of the Rust runtime's (SIGPIPE, the stack overflow report), its name, its
//! death signal, process groups, waiting without reaping, the standard error pipe, and the
//! scrubbing of the worker marker from the initial environment. The rest of the crate denies
//! `unsafe_code` and calls this module's safe functions (the worker's constructor in `entry.rs`
//! is an attribute, not an `unsafe` block). Linux only, like the backend (`prctl`, `memfd`, `/proc`); nix's safe wrappers are
//! used where they exist.

use std::ffi::{c_int, c_void, OsString};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgrp, getpid, gettid, Pid};

// ---------------------------------------------------------------------------------------------
// The worker's start-up

/// Does in a worker what the Rust runtime does before `main`, which never runs there: ignore
/// SIGPIPE (a write to a closed pipe is then an `io::Error` of kind `BrokenPipe`), make sure
/// descriptors 1 and 2 are open, and report a stack overflow of the main thread, which runs the
/// tasks, as `thread 'main' (<tid>) has overflowed its stack` before aborting.
///
/// Threads a task spawns get no alternate signal stack (std makes one per thread only when its
/// runtime started, which it did not in a worker), so an overflow on them still ends the worker
/// as a plain SIGSEGV.
///
/// # Errors
///
/// Says which step failed; the worker cannot behave like a normal program then.
pub(crate) fn init_like_main() -> Result<(), String> {
    // SAFETY: ignoring a signal replaces no handler that could be running; the worker is still
    // single-threaded here (the constructor runs before `main`).
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map_err(|error| format!("cannot ignore SIGPIPE: {error}"))?;
    open_standard_descriptors()?;
    report_stack_overflows().map_err(|error| format!("cannot watch for stack overflows: {error}"))
}

/// Opens `/dev/null` on descriptors 1 and 2 if they are closed, as std does for 0 to 2, so that
/// no file a task opens ends up being written as our output. Descriptor 0 holds the channel.
fn open_standard_descriptors() -> Result<(), String> {
    for fd in [1, 2] {
        if nix::fcntl::fcntl(borrow(fd), nix::fcntl::FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|error| format!("cannot open /dev/null: {error}"))?;
            // The lowest free descriptor is `fd` itself; keep it open for good.
            if null.as_raw_fd() == fd {
                std::mem::forget(null);
            }
        }
    }
    Ok(())
}

/// Borrows a standard descriptor number.
fn borrow(fd: c_int) -> BorrowedFd<'static> {
    // SAFETY: only used for 0 to 2, which no code in this process closes; a closed one is an
    // error of the call made with it (EBADF), never another file.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Where the main thread's stack would grow past its limit, and the main thread's id.
static GUARD_START: AtomicUsize = AtomicUsize::new(0);
static GUARD_END: AtomicUsize = AtomicUsize::new(0);
static MAIN_THREAD: AtomicI32 = AtomicI32::new(0);
/// The alternate signal stack: std's size (`SIGSTKSZ` is 8 KiB) with room to spare.
const SIGNAL_STACK: usize = 64 << 10;

/// Gives the calling thread (the worker's main thread) an alternate signal stack and handles
/// SIGSEGV and SIGBUS on it, unless a handler is set already.
fn report_stack_overflows() -> nix::Result<()> {
    let Some(guard) = main_stack_guard() else {
        // Without the stack's bounds a fault cannot be told from an overflow: nothing to add.
        return Ok(());
    };
    GUARD_START.store(guard.start, Ordering::Relaxed);
    GUARD_END.store(guard.end, Ordering::Relaxed);
    MAIN_THREAD.store(gettid().as_raw(), Ordering::Relaxed);
    install_signal_stack()?;
    let action = SigAction::new(
        SigHandler::SigAction(on_fault),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    for fault in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: `on_fault` is async-signal-safe (atomics, `write`, `abort`, `sigaction`).
        let previous = unsafe { signal::sigaction(fault, &action) }?;
        if previous.handler() != SigHandler::SigDfl {
            // The program handles faults itself (a sanitizer, a constructor of its own): keep
            // its handler, as std does.
            // SAFETY: puts back the handler that was there a moment ago.
            unsafe { signal::sigaction(fault, &previous) }?;
        }
    }
    Ok(())
}

/// The page below the main thread's stack limit, where an overflow faults (std's reckoning:
/// Linux grows the main stack on demand up to `RLIMIT_STACK`, which `pthread_getattr_np`
/// reports as the stack's start).
fn main_stack_guard() -> Option<std::ops::Range<usize>> {
    let page = page_size();
    let mut attributes = std::mem::MaybeUninit::<libc::pthread_attr_t>::zeroed();
    // SAFETY: `pthread_getattr_np` initializes `attributes` for the calling thread when it
    // returns 0, and only then are they read and destroyed.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attributes.as_mut_ptr()) != 0 {
            return None;
        }
        let mut start = std::ptr::null_mut::<c_void>();
        let mut size = 0;
        let read = libc::pthread_attr_getstack(attributes.as_ptr(), &mut start, &mut size);
        libc::pthread_attr_destroy(attributes.as_mut_ptr());
        if read != 0 || start.is_null() {
            return None;
        }
        // A parent may have set a limit that is not a multiple of the page size.
        let start = (start as usize).next_multiple_of(page);
        Some(start.checked_sub(page)?..start)
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(4096)
}

/// Maps an alternate signal stack, with a guard page below it, for the calling thread. It is
/// never unmapped: the main thread lives as long as the process.
fn install_signal_stack() -> nix::Result<()> {
    use nix::sys::mman::{mmap_anonymous, mprotect, MapFlags, ProtFlags};
    let page = page_size();
    let length = NonZeroUsize::new(SIGNAL_STACK + page).ok_or(Errno::EINVAL)?;
    // SAFETY: a new private anonymous mapping aliases nothing; the guard page at its bottom is
    // made inaccessible before the stack above it is handed to the kernel.
    unsafe {
        let base = mmap_anonymous(
            None,
            length,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
        )?;
        mprotect(base, page, ProtFlags::PROT_NONE)?;
        let stack = libc::stack_t {
            ss_sp: base.as_ptr().cast::<u8>().add(page).cast(),
            ss_flags: 0,
            ss_size: SIGNAL_STACK,
        };
        Errno::result(libc::sigaltstack(&stack, std::ptr::null_mut())).map(drop)
    }
}

/// The SIGSEGV and SIGBUS handler: a fault in the main thread's guard page is a stack overflow,
/// reported as std reports it before aborting; anything else gets the default action.
extern "C" fn on_fault(signal: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: the kernel passes an SA_SIGINFO handler a valid `siginfo_t`.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let guard = GUARD_START.load(Ordering::Relaxed)..GUARD_END.load(Ordering::Relaxed);
    let thread = gettid().as_raw();
    // A positive code is a fault the kernel raised; a signal sent by a process has none.
    if code > 0 && guard.contains(&address) && thread == MAIN_THREAD.load(Ordering::Relaxed) {
        let mut message = Message::default();
        message.push(b"\nthread 'main' (");
        message.push_number(thread.unsigned_abs());
        message
            .push(b") has overflowed its stack\nfatal runtime error: stack overflow, aborting\n");
        // SAFETY: `write` and `abort` are async-signal-safe; the buffer outlives the call.
        unsafe {
            libc::write(2, message.bytes.as_ptr().cast(), message.len);
            libc::abort();
        }
    }
    // SAFETY: `sigaction` is async-signal-safe; a zeroed `sigaction` with `SIG_DFL` is valid.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
    }
    if code <= 0 {
        // Sent, not raised by an instruction: returning would not repeat it, so send it again
        // (blocked while this handler runs, it arrives on return, with the default action).
        // SAFETY: `raise` is async-signal-safe.
        unsafe { libc::raise(signal) };
    }
    // A fault repeats on return, now with the default action.
}

/// A message built without allocating, for a signal handler.
struct Message {
    bytes: [u8; 128],
    len: usize,
}

impl Default for Message {
    fn default() -> Message {
        Message { bytes: [0; 128], len: 0 }
    }
}

impl Message {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, number: u32) {
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut rest = number;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

// ---------------------------------------------------------------------------------------------
// The worker's death with its pool, and its process group

/// The signal a worker asks to get when its pool's thread dies (`PR_SET_PDEATHSIG`). Not
/// SIGKILL: the worker must take the processes its tasks started (its process group) with it,
/// which only a handler can do. SIGHUP ("the controlling process is gone") is also what a
/// terminal's hang-up sends; ending the group is the right answer to both.
const DEATH_SIGNAL: Signal = Signal::SIGHUP;

/// Makes the worker end its process group, itself included, when the pool's thread that
/// started it dies.
///
/// # Errors
///
/// The system's message if the handler or the death signal cannot be set.
pub(crate) fn die_with_parent() -> nix::Result<()> {
    let action =
        SigAction::new(SigHandler::Handler(on_parent_death), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: `on_parent_death` is async-signal-safe (`getpid`, `getpgrp`, `kill`).
    unsafe { signal::sigaction(DEATH_SIGNAL, &action) }?;
    nix::sys::prctl::set_pdeathsig(DEATH_SIGNAL)
}

extern "C" fn on_parent_death(_signal: c_int) {
    kill_own_group();
}

/// SIGKILLs the worker's process group if the worker leads it (the pool starts each worker as
/// the leader of a group of its own), and the worker itself in any case. Async-signal-safe.
pub(crate) fn kill_own_group() {
    let me = getpid();
    if getpgrp() == me {
        // Failures leave nothing better to do; the next line still ends this process.
        let _ = signal::killpg(me, Signal::SIGKILL);
    }
    let _ = signal::kill(me, Signal::SIGKILL);
}

/// SIGKILLs the process group led by worker `pid`, and the worker itself (in case a task moved
/// it to another group).
///
/// Call it only while the worker is not reaped: until then its pid, and with it the group's id,
/// cannot belong to anyone else (Linux allocates no pid that is still some process's group
/// id, and the unreaped worker holds it). After the reap the number may be reused.
pub(crate) fn kill_process_group(pid: u32) {
    // Zero or a negative number would name our own group or every process we may signal.
    let Some(pid) = i32::try_from(pid).ok().filter(|pid| *pid > 0).map(Pid::from_raw) else {
        return;
    };
    // A failure means the processes are gone already, which is what we wanted.
    let _ = signal::killpg(pid, Signal::SIGKILL);
    let _ = signal::kill(pid, Signal::SIGKILL);
}

/// Whether child `pid` has ended, without reaping it (so that it can still be signalled safely
/// as a group).
pub(crate) fn has_exited(pid: u32) -> io::Result<bool> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid)), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(error) => Err(error.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The standard error pipe

/// A pipe whose descriptors close on `exec`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// What [`wait_for_input`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Input {
    /// A read of `data` will not block: it has bytes, or it ended.
    pub(crate) is_readable: bool,
    /// `stop` has something to say (its writer wrote or closed).
    pub(crate) is_stopped: bool,
    /// The peer of socket `watch` hung up (or the socket failed).
    pub(crate) is_hung_up: bool,
}

/// Blocks until `data` is readable, `stop` (if any) is signalled or the peer of socket `watch`
/// (if any) hangs up, for at most `timeout` (`None`: forever).
pub(crate) fn wait_for_input(
    data: BorrowedFd<'_>,
    stop: Option<BorrowedFd<'_>>,
    watch: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> io::Result<Input> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(limit) => PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX),
    };
    let readable = PollFlags::POLLIN;
    let hang_up = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds: Vec<PollFd<'_>> = [Some(data), stop]
        .into_iter()
        .flatten()
        .map(|fd| PollFd::new(fd, readable))
        .chain(watch.map(|fd| PollFd::new(fd, hang_up)))
        .collect();
    loop {
        match poll(&mut fds, timeout) {
            Ok(_) => break,
            Err(Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    // `revents` is `None` when the kernel set a flag nix does not name, `POLLRDHUP` among them:
    // that is news too.
    let has_news = |fd: Option<&PollFd<'_>>| {
        fd.is_some_and(|fd| fd.revents().is_none_or(|events| !events.is_empty()))
    };
    let watched = fds.len() - usize::from(watch.is_some());
    Ok(Input {
        is_readable: has_news(fds.first()),
        is_stopped: stop.is_some() && has_news(fds.get(1)),
        is_hung_up: watch.is_some() && has_news(fds.get(watched)),
    })
}

/// Whether the peer of socket `fd` has hung up (or the socket failed), without waiting.
pub(crate) fn has_hung_up(fd: BorrowedFd<'_>) -> bool {
    let hang_up = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds = [PollFd::new(fd, hang_up)];
    loop {
        match poll(&mut fds, PollTimeout::ZERO) {
            // `None`: a flag nix does not name, which can only be `POLLRDHUP`.
            Ok(_) => return fds[0].revents().is_none_or(|events| !events.is_empty()),
            Err(Errno::EINTR) => {}
            Err(_) => return true,
        }
    }
}

/// Whether this process's standard error is a pipe (read by a pool).
fn is_stderr_a_pipe() -> bool {
    static IS_PIPE: OnceLock<bool> = OnceLock::new();
    *IS_PIPE.get_or_init(|| {
        use nix::sys::stat::{fstat, SFlag};
        fstat(borrow(2)).is_ok_and(|stat| {
            SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO
        })
    })
}

/// Waits, yielding the CPU, until the pool has read everything this worker wrote to its
/// standard error, or `limit` is over: called before a job starts, so that the output of the
/// job before is never taken for this one's. Does nothing if standard error is not a pipe.
pub(crate) fn wait_stderr_drained(limit: Duration) {
    if is_stderr_a_pipe() {
        wait_drained(borrow(2), limit);
    }
}

/// Waits, yielding the CPU, until pipe `fd` holds no unread bytes, or `limit` is over.
pub(crate) fn wait_drained(fd: BorrowedFd<'_>, limit: Duration) {
    let mut deadline = None;
    while unread_bytes(fd).is_ok_and(|unread| unread > 0) {
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limit);
        if Instant::now() >= deadline {
            return;
        }
        std::thread::yield_now();
    }
}

/// How many bytes wait in pipe `fd` (`FIONREAD`).
fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut unread: c_int = 0;
    // SAFETY: FIONREAD writes one `int` through the pointer, which points at `unread`.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut unread) };
    Errno::result(result).map_err(io::Error::from)?;
    Ok(usize::try_from(unread).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The worker marker

/// Removes environment variable `name` and returns its value; its `NAME=value` string is also
/// overwritten with zeros in the initial environment block, which `/proc/<pid>/environ` shows
/// to anyone allowed to look (removing the variable only drops the pointer to it).
///
/// Call it only while the process is single-threaded (before `main`): it reads `environ`.
pub(crate) fn take_env_from_initial_block(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name)?;
    let entry = find_in_environ(name.as_bytes());
    // SAFETY: the process is single-threaded, as the caller ensures (the worker's constructor,
    // before `main`): no other thread reads or writes the environment meanwhile.
    unsafe { std::env::remove_var(name) };
    if let (Some((start, len)), Some(block)) = (entry, initial_environment_block()) {
        // Only bytes of the initial block: a string `setenv` made lives on the heap, where libc
        // may still use it.
        if block.start <= start && start + len <= block.end {
            // SAFETY: `start..start + len` is a `NAME=value` string inside the process's initial
            // environment block (the kernel's, on the main thread's stack, writable). After
            // `remove_var` nothing points at it: `environ` lost its entry and `value` is a copy.
            unsafe { std::ptr::write_bytes(start as *mut u8, 0, len) };
        }
    }
    Some(value)
}

/// The address and length (without the NUL) of the `NAME=` entry in `environ`.
fn find_in_environ(name: &[u8]) -> Option<(usize, usize)> {
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings, which nothing
    // changes while the process is single-threaded, as the caller ensures.
    unsafe {
        let mut entry = libc::environ as *const *const libc::c_char;
        if entry.is_null() {
            return None;
        }
        while !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if text.len() > name.len() && text.starts_with(name) && text[name.len()] == b'=' {
                return Some((*entry as usize, text.len()));
            }
            entry = entry.add(1);
        }
    }
    None
}

/// Where the kernel put the initial environment strings (`env_start`, `env_end`: fields 50 and
/// 51 of `/proc/self/stat`).
fn initial_environment_block() -> Option<std::ops::Range<usize>> {
    let stat = std::fs::read("/proc/self/stat").ok()?;
    let after_name = stat.iter().rposition(|byte| *byte == b')')? + 1;
    let fields = String::from_utf8(stat[after_name..].to_vec()).ok()?;
    // Field 3 (the state) is the first after the name.
    let mut fields = fields.split_whitespace().skip(50 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some(start..end)
}

// ---------------------------------------------------------------------------------------------
// Memory shared with a worker

/// A mapping of a memory file that the pool and one worker both map: the pool creates it and
/// hands the worker its descriptor. It starts with `words` 64-bit atomic words, then `bytes`
/// bytes of data, which either side copies in and out by offset (bounds-checked).
pub(crate) struct SharedMemory {
    base: std::ptr::NonNull<u8>,
    words: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory; the words are only accessed as atomics, and the
// data only by bounds-checked copies, so it may move to and be used from any thread.
unsafe impl Send for SharedMemory {}
// SAFETY: as above: `&SharedMemory` offers only atomic words and copies.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Creates a zeroed memory file of `words` words and `bytes` bytes and maps it; the
    /// descriptor is for the worker.
    pub(crate) fn create(
        name: &str,
        words: usize,
        bytes: usize,
    ) -> Result<(SharedMemory, OwnedFd), String> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC)
            .map_err(|error| format!("cannot create the {name} memory: {error}"))?;
        let len = i64::try_from(Self::len(words, bytes)).map_err(|_| "a mapping too large")?;
        nix::unistd::ftruncate(&fd, len)
            .map_err(|error| format!("cannot size the {name} memory: {error}"))?;
        let memory = SharedMemory::map(&fd, words, bytes)?;
        Ok((memory, fd))
    }

    /// Maps the memory file the pool created (the worker's side).
    pub(crate) fn map(
        fd: impl std::os::fd::AsFd,
        words: usize,
        bytes: usize,
    ) -> Result<SharedMemory, String> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = NonZeroUsize::new(Self::len(words, bytes)).ok_or("an empty mapping")?;
        // A file shorter than the mapping would fault on access: check before mapping.
        let size = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|error| format!("cannot inspect the shared memory: {error}"))?
            .st_size;
        if usize::try_from(size).ok() != Some(len.get()) {
            return Err(format!("the shared memory has {size} bytes, not {len}"));
        }
        // SAFETY: a fresh shared mapping of a file of exactly `len` bytes (checked above);
        // nothing else in this process uses the address range the kernel picks.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|error| format!("cannot map the shared memory: {error}"))?;
        Ok(SharedMemory { base: base.cast(), words, bytes })
    }

    fn len(words: usize, bytes: usize) -> usize {
        words * 8 + bytes
    }

    /// The atomic words at the start of the mapping.
    pub(crate) fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is page-aligned, holds `words` 8-byte words first, lives as long
        // as `self`, and these words are only ever accessed as atomics (by both processes).
        unsafe {
            std::slice::from_raw_parts(
                self.base.cast::<std::sync::atomic::AtomicU64>().as_ptr(),
                self.words,
            )
        }
    }

    /// Blocks while word `index` holds `expected`, until [`SharedMemory::wake`] on the same word
    /// in either process, a signal, or `timeout` (`None`: no limit); returns whether the time ran
    /// out. A cross-process futex (`FUTEX_WAIT` without `FUTEX_PRIVATE_FLAG`: the kernel keys it
    /// by the memory file and offset, so the pool's and the worker's mappings meet). The kernel
    /// compares the word's low 32 bits, so the words waited on hold values below 2^32.
    ///
    /// Returns at once if the word no longer holds `expected`: a wake that changed the word
    /// before this call is never lost.
    pub(crate) fn wait(&self, index: usize, expected: u32, timeout: Option<Duration>) -> bool {
        let limit = timeout.map(|timeout| libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        });
        let limit_ptr = limit.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
        // SAFETY: the address is a live, aligned 32-bit half of one of the mapping's words
        // (`futex_word`); `FUTEX_WAIT` only reads it, and the timeout pointer is null or points
        // at `limit`, which outlives the call.
        let result = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.futex_word(index),
                libc::FUTEX_WAIT,
                expected,
                limit_ptr,
                std::ptr::null::<u32>(),
                0u32,
            )
        };
        // Woken, the word changed (`EAGAIN`) or a signal (`EINTR`): the caller looks again.
        result == -1 && Errno::last() == Errno::ETIMEDOUT
    }

    /// Wakes every thread of either process blocked in [`SharedMemory::wait`] on word `index`.
    pub(crate) fn wake(&self, index: usize) {
        // SAFETY: as in `wait`; `FUTEX_WAKE` does not access the word at all.
        unsafe {
            libc::syscall(libc::SYS_futex, self.futex_word(index), libc::FUTEX_WAKE, i32::MAX);
        }
    }

    /// The address of the 32-bit half of word `index` that holds its low bits (a futex is 32
    /// bits wide); panics if `index` is out of bounds (a caller's bug).
    fn futex_word(&self, index: usize) -> *const u32 {
        let word = self.words()[index].as_ptr().cast::<u32>();
        if cfg!(target_endian = "little") {
            word.cast_const()
        } else {
            word.wrapping_add(1).cast_const()
        }
    }

    /// Copies `from` into the data at `offset`; panics if it does not fit (a caller's bug).
    pub(crate) fn copy_in(&self, offset: usize, from: &[u8]) {
        assert!(offset <= self.bytes && from.len() <= self.bytes - offset, "copy_in out of bounds");
        // SAFETY: the range is inside the data area (checked above). The protocol gives the
        // range to this side while it writes; a hostile worker writing it at the same time can
        // only garble these bytes, which the reader checks like any bytes from a worker.
        unsafe {
            let data = self.base.as_ptr().add(self.words * 8);
            std::ptr::copy_nonoverlapping(from.as_ptr(), data.add(offset), from.len());
        }
    }

    /// Copies the data at `offset` into `to`; panics if it does not fit (a caller's bug).
    pub(crate) fn copy_out(&self, offset: usize, to: &mut [u8]) {
        assert!(offset <= self.bytes && to.len() <= self.bytes - offset, "copy_out out of bounds");
        // SAFETY: as in `copy_in`: inside the data area, owned by this side by the protocol.
        unsafe {
            let data = self.base.as_ptr().add(self.words * 8);
            std::ptr::copy_nonoverlapping(data.add(offset), to.as_mut_ptr(), to.len());
        }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `map` with this length and is not used after this.
        // A failure would leak the mapping, nothing worse.
        let _ =
            unsafe { nix::sys::mman::munmap(self.base.cast(), Self::len(self.words, self.bytes)) };
    }
}

// ---------------------------------------------------------------------------------------------
// Frames too large for a ring: a region of their own per lane

/// The seal a large frames' region must carry before the receiving side maps it: the file cannot
/// shrink (a page cut off under the reader's mapping would fault on access, SIGBUS, which would
/// kill the pool). Seals are only ever added, so once seen it holds for the file's life.
const REGION_SEALS: nix::fcntl::SealFlag = nix::fcntl::SealFlag::F_SEAL_SHRINK;

/// A memory file of a fixed size, sealed against shrinking, mapped by the two sides of one lane:
/// the sender writes a large frame at its start, the receiver copies it out. The bytes are
/// accessed only by copies (like the rings' bytes): the other side may write them at any time,
/// and a copy that races such a write only garbles what it copies.
pub(crate) struct Region {
    base: std::ptr::NonNull<u8>,
    len: usize,
    /// Mapped for writing: made by this side ([`Region::create`]), not received.
    is_writable: bool,
}

// SAFETY: the mapping is plain shared memory accessed only by bounds-checked copies, so it may
// move to and be used from any thread.
unsafe impl Send for Region {}
// SAFETY: as above: `&Region` offers only copies.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a zeroed region of `len` bytes (sparse: a page takes memory once written), sealed
    /// against shrinking, growing and further seals, and maps it for writing; the descriptor is
    /// for the other side.
    ///
    /// # Errors
    ///
    /// The system's error if the file cannot be created, sized, sealed or mapped.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<(Region, OwnedFd)> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let size = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        let file_len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        nix::unistd::ftruncate(&fd, file_len)?;
        let seals = REGION_SEALS | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
        // SAFETY: a fresh shared mapping of a file of exactly `len` bytes that cannot shrink;
        // nothing else in this process uses the address range the kernel picks.
        let base = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }?;
        Ok((Region { base: base.cast(), len, is_writable: true }, fd))
    }

    /// Maps the region the other side sent, read-only, after checking that no access to it can
    /// fault: it is a memory file (one that cannot be sealed is refused), sealed against
    /// shrinking, and holds between 1 and `max_len` bytes (the mapping's size). The descriptor is
    /// closed (the mapping keeps the file).
    ///
    /// # Errors
    ///
    /// Says what is wrong with the file: the pool gets it from a worker, untrusted.
    pub(crate) fn map_received(fd: OwnedFd, max_len: usize) -> Result<Region, String> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        use nix::sys::stat::{fstat, SFlag};
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS)
            .map_err(|error| format!("the descriptor is no memory file ({error})"))?;
        let seals = SealFlag::from_bits_retain(seals);
        if !seals.contains(REGION_SEALS) {
            return Err(format!(
                "the memory file is not sealed against shrinking (seals {seals:?})"
            ));
        }
        // Checked after the seal: the size can no longer go down.
        let stat =
            fstat(&fd).map_err(|error| format!("cannot inspect the memory file: {error}"))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err("the descriptor is no memory file".to_owned());
        }
        let len = usize::try_from(stat.st_size)
            .ok()
            .filter(|len| *len <= max_len)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                format!("the memory file holds {} bytes, not 1 to {max_len}", stat.st_size)
            })?;
        // SAFETY: a fresh read-only shared mapping of the whole file, which holds `len` bytes
        // and cannot shrink (checked above), so no access to it faults; nothing else in this
        // process uses the address range the kernel picks.
        let base = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, &fd, 0) }
            .map_err(|error| format!("cannot map the memory file: {error}"))?;
        Ok(Region { base: base.cast(), len: len.get(), is_writable: false })
    }

    /// The region's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `bytes` to the start of the region; panics if they do not fit or the region was
    /// received rather than made by this side, mapped read-only (a caller's bug).
    pub(crate) fn write(&self, bytes: &[u8]) {
        assert!(self.is_writable, "a write to a region mapped read-only");
        assert!(bytes.len() <= self.len, "a region write out of bounds");
        // SAFETY: the range is inside the mapping, which is writable (both checked above). The
        // protocol gives the region to this side while it writes; a peer writing at the same
        // time can only garble these bytes, which the reader checks like any from the other side.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr(), bytes.len()) };
    }

    /// Replaces the contents of `out` with the region's first `len` bytes; panics if the region
    /// is shorter (a caller's bug). The bytes are copied straight into `out`'s memory, with no
    /// zero-filling pass before.
    pub(crate) fn read(&self, len: usize, out: &mut Vec<u8>) {
        assert!(len <= self.len, "a region read out of bounds");
        out.clear();
        out.reserve(len);
        // SAFETY: the source range is inside the mapping; the destination is `out`'s spare
        // capacity of at least `len` bytes (reserved above), and after the copy its first `len`
        // bytes are initialized, so they may be taken into its length. A peer writing the region
        // meanwhile can only garble the bytes copied, which are then checked like any bytes from
        // the other side.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr(), out.as_mut_ptr(), len);
            out.set_len(len);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was made with this length and is not used after this. A failure
        // would leak it, nothing worse.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

/// What a peer can hand over as a large frames' region, for the tests and the fuzz target of the
/// receiving side: a memory file holding `bytes` with the seals of `seals` (bit 0: shrink, 1:
/// grow, 2: write, 3: seal), returned with a second descriptor of it, which the peer keeps to
/// cut the file afterwards with [`try_to_cut`].
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn peer_memory_file(bytes: &[u8], seals: u8) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::Write;
    let fd = memfd_create("peer", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let flags = [
        SealFlag::F_SEAL_SHRINK,
        SealFlag::F_SEAL_GROW,
        SealFlag::F_SEAL_WRITE,
        SealFlag::F_SEAL_SEAL,
    ];
    let chosen = flags
        .iter()
        .enumerate()
        .filter(|(bit, _)| seals & (1 << bit) != 0)
        .fold(SealFlag::empty(), |all, (_, flag)| all | *flag);
    fcntl(&file, FcntlArg::F_ADD_SEALS(chosen))?;
    let kept = file.try_clone()?;
    Ok((file.into(), kept.into()))
}

/// What a hostile peer does to a memory file it sent: writes into it (allowed: the reader
/// copies bytes out before it looks at them), then cuts it to nothing, which fails on a file
/// sealed against shrinking. Returns whether the cut took.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn try_to_cut(fd: &OwnedFd) -> bool {
    let _ = nix::sys::uio::pwrite(fd, &[0xff; 16], 0);
    nix::unistd::ftruncate(fd, 0).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Descriptors and names

/// Sends descriptor `fd` over `channel`, with one byte to carry it.
pub(crate) fn send_fd(channel: &std::os::unix::net::UnixStream, fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let payload = [0u8];
    let iov = [io::IoSlice::new(&payload)];
    let control = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(channel.as_raw_fd(), &iov, &control, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// What [`take_fd`] found on a channel.
#[derive(Debug)]
pub(crate) enum Received {
    /// A descriptor, with its byte.
    Fd(OwnedFd),
    /// A byte that carries no descriptor, or no byte yet.
    Nothing,
    /// The other side closed the channel.
    Closed,
}

/// Takes the next byte on `channel`, and the descriptor [`send_fd`] sent with it, without
/// waiting (`MSG_DONTWAIT`): the sender sends the descriptor before it announces it. Extra
/// descriptors that came with the byte are closed.
///
/// # Errors
///
/// The system's error if the channel failed.
pub(crate) fn take_fd(channel: &std::os::unix::net::UnixStream) -> io::Result<Received> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut payload = [0u8];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let message = loop {
        match recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return Ok(Received::Nothing),
            other => break other?,
        }
    };
    if message.bytes == 0 {
        return Ok(Received::Closed);
    }
    let mut received = None;
    for control in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for this message; no
                // one else owns it. Extra descriptors, if any, are closed by dropping them.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    Ok(received.map_or(Received::Nothing, Received::Fd))
}

/// The worker's side of [`send_fd`]: receives the descriptor sent first on `channel`.
pub(crate) fn receive_fd(channel: &std::os::unix::net::UnixStream) -> Result<OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut payload = [0u8];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let message =
        recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|error| format!("cannot receive the shared memory: {error}"))?;
    let mut received = None;
    for control in message.cmsgs().map_err(|error| error.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for this message; no
                // one else owns it. Extra descriptors, if any, are closed by dropping them.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    received.ok_or_else(|| "the pool sent no shared memory".to_owned())
}

/// The worker's side: takes the channel the pool put at standard input and puts `/dev/null`
/// there instead, so that a task reading standard input never reads the channel.
pub(crate) fn take_channel_from_stdin() -> Result<OwnedFd, String> {
    let channel = borrow(0).try_clone_to_owned().map_err(|error| error.to_string())?;
    let null = std::fs::File::open("/dev/null").map_err(|error| error.to_string())?;
    nix::unistd::dup2_stdin(&null).map_err(|error| error.to_string())?;
    Ok(channel)
}

/// The file name of this program's executable, for the names of its workers.
pub(crate) fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "parallel".to_owned())
}

/// Names this process after the program (its `comm`, what `top` shows; at most 15 bytes), not
/// after the `/proc/self/exe` it was started through.
pub(crate) fn name_this_process() {
    let mut name = program_name().into_bytes();
    name.retain(|byte| *byte != 0);
    name.truncate(15);
    if let Ok(name) = std::ffi::CString::new(name) {
        // A name is a courtesy to operators; failing to set it changes nothing else.
        let _ = nix::sys::prctl::set_name(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_peer_hanging_up_is_seen_by_the_watch() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (data, _writer) = pipe().unwrap();
        let quiet = wait_for_input(data.as_fd(), None, Some(ours.as_fd()), Some(Duration::ZERO));
        assert!(!quiet.unwrap().is_hung_up);
        assert!(!has_hung_up(ours.as_fd()));
        drop(theirs);
        // `POLLRDHUP` is a flag nix does not name: it must still count.
        let input = wait_for_input(data.as_fd(), None, Some(ours.as_fd()), None).unwrap();
        assert!(input.is_hung_up && !input.is_readable && !input.is_stopped);
        assert!(has_hung_up(ours.as_fd()));
    }
}
