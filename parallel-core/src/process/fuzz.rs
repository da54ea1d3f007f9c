//! What the fuzz targets drive: the protocol's decoders on untrusted bytes, the shared rings
//! left in any state, and the regions of large frames, as each side meets them. Built only
//! with the `fuzzing` feature.

use super::protocol::{self, ReadError};

/// Reads frames from `bytes` as the pool reads a worker's channel, under frame limit `limit`,
/// decoding each; returns how many frames were read. Must never panic.
pub fn pool_side(bytes: &[u8], limit: usize) -> usize {
    let mut reader = bytes;
    let mut buffer = Vec::new();
    let mut frames = 0;
    loop {
        match protocol::read_frame(&mut reader, &mut buffer, limit) {
            Ok(body) => {
                let _ = protocol::decode_from_worker(body);
                frames += 1;
            }
            Err(ReadError::Closed | ReadError::Io(_) | ReadError::Protocol(_)) => return frames,
        }
    }
}

/// Reads frames from `bytes` as a worker reads its channel; returns how many were read.
pub fn worker_side(bytes: &[u8], limit: usize) -> usize {
    let mut reader = bytes;
    let mut buffer = Vec::new();
    let mut frames = 0;
    while let Ok(body) = protocol::read_frame(&mut reader, &mut buffer, limit) {
        // The worker queues a job by its tag alone and decodes it when it runs it: the two must
        // agree on what is a `Run` frame.
        let decoded = protocol::decode_to_worker(body);
        let is_run = matches!(decoded, Ok(protocol::ToWorker::Run { .. }));
        assert!(!is_run || protocol::is_run(body), "a run frame is not queued: {decoded:?}");
        assert!(decoded.is_err() || is_run || !protocol::is_run(body), "{decoded:?} is queued");
        // A `RunMany` frame is checked whole when it arrives, and each of its jobs taken out of
        // it later: the count it was checked with is the count taken out.
        let is_many = matches!(decoded, Ok(protocol::ToWorker::RunMany { .. }));
        assert!(!is_many || protocol::is_run_many(body), "a run-many frame is not queued");
        assert!(decoded.is_err() || is_many || !protocol::is_run_many(body), "{decoded:?}");
        if let Ok(protocol::ToWorker::RunMany { count, entries, .. }) = decoded {
            assert_eq!(protocol::run_entries(entries).count(), count);
        }
        frames += 1;
    }
    frames
}

/// Decodes `bytes` as a task value of type `T`, as the pool decodes an output or error.
pub fn value<T: serde::de::DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    protocol::decode_value(bytes)
}

/// Reads frames from `bytes` as the pool reads a worker's channel, under frame limit `limit`,
/// and decodes the value of each output or error reply as a `T`, as the pool's reader thread
/// does; returns how many decoded. Must never panic nor overflow the stack, however deep the
/// values nest.
pub fn pool_side_values<T: serde::de::DeserializeOwned + 'static>(
    bytes: &[u8],
    limit: usize,
) -> usize {
    let mut reader = bytes;
    let mut buffer = Vec::new();
    let mut decoded = 0;
    while let Ok(body) = protocol::read_frame(&mut reader, &mut buffer, limit) {
        if let Ok(protocol::FromWorker::Done {
            reply: protocol::Reply::Output(value) | protocol::Reply::Failed(value),
            ..
        }) = protocol::decode_from_worker(body)
        {
            decoded += usize::from(protocol::decode_value::<T>(value).is_ok());
        }
    }
    decoded
}

/// Frames `value` as a worker's reply to job 1 (an output, or with `is_error` an error).
pub fn reply_frame(value: &[u8], is_error: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    protocol::begin_value_reply(&mut frame, 1, is_error);
    frame.extend_from_slice(value);
    // The frame limit is the caller's to pick; here any length that fits the header does.
    let _ = protocol::finish_frame(&mut frame, u32::MAX as usize);
    frame
}

/// Leaves both shared rings (jobs and replies) as a hostile peer could: positions `head` and
/// `tail` and `bytes` from `tail` on; then takes frames out of each as the pool and the worker
/// do, under frame limit `limit`, and pushes one into each. Returns how many frames were taken.
/// Must never panic, hang, nor allocate past `limit`.
pub fn rings(head: u64, tail: u64, bytes: &[u8], limit: usize) -> usize {
    super::ring::hostile(head, tail, bytes, limit)
}

/// A hostile worker's large reply: an announcement of `announced` bytes in a new region and, on
/// the socket, what `shape` picks (a memory file of `bytes` with any seals, a pipe, or no
/// descriptor), taken as the pool's reader does under frame limit `limit`, then the worker tries
/// to cut the file and the pool reads it again. Returns whether a frame was taken. Must never
/// panic nor fault (SIGBUS).
pub fn memory_files(bytes: &[u8], announced: u64, shape: u8, limit: usize) -> bool {
    super::large::hostile(bytes, announced, shape, limit)
}
