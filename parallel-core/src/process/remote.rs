//! Worker processes as the slots of a cluster serving process: the tasks arrive serialized from
//! the stream and go to a worker as they are, and the worker's reply goes back to the caller as
//! it is, without decoding anything in between (the serving process has no task type to decode
//! it with, and needs none).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::protocol::Reply;
use super::{build_id, Failure, Request, Settings};
use crate::cluster::slots::{Ticket, Work};
use crate::cluster::wire::{Ending, Report};
use crate::job::Stop;
use crate::ledger::Ledger;
use crate::progress::Decode;
use crate::Error;

/// The worker processes of a serving process.
pub(crate) struct RemoteSlots {
    backend: super::ProcessBackend,
    max_frame: usize,
}

impl RemoteSlots {
    pub(crate) fn start(workers: usize, max_frame: usize) -> Result<RemoteSlots, Error> {
        static NEXT_POOL: AtomicU64 = AtomicU64::new(u64::MAX / 2);
        let ledger = Arc::new(Ledger::new(NEXT_POOL.fetch_add(1, Ordering::Relaxed)));
        let settings = Settings {
            workers,
            max_tasks_per_worker: None,
            max_memory_per_worker: None,
            max_frame,
        };
        let _ = build_id();
        Ok(RemoteSlots { backend: super::ProcessBackend::start(&ledger, settings)?, max_frame })
    }

    /// Hands `works` to the workers together (see `Shared::submit_all`).
    pub(crate) fn run(&self, works: Vec<Work>) {
        if works.is_empty() {
            return;
        }
        let tickets: Vec<Arc<Ticket>> = works.iter().map(|work| Arc::clone(&work.ticket)).collect();
        let requests = works
            .into_iter()
            .map(|work| {
                Box::new(Remote { work, id: next_id(), max_frame: self.max_frame })
                    as Box<dyn Request>
            })
            .collect();
        if !self.backend.submit_requests(requests) {
            for ticket in tickets {
                ticket.end(Ending::Report(Report::Unavailable("the slots stopped".to_owned())));
            }
        }
    }

    pub(crate) fn stop(&self) {
        self.backend.stop(true);
    }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One task from the stream, for a worker.
struct Remote {
    work: Work,
    id: u64,
    max_frame: usize,
}

impl Remote {
    fn ticket(&self) -> &Arc<Ticket> {
        &self.work.ticket
    }
}

impl Request for Remote {
    fn start(&self, stop: Arc<dyn Stop>, frame: &mut Vec<u8>) -> Option<Result<(), String>> {
        if !self.ticket().begin() {
            return None;
        }
        self.ticket().set_stop(stop);
        self.ticket().arm(self.work.timeout);
        // The frame's length header is not part of its length (see `protocol::encode_value`).
        if frame.len() + self.work.args.len() > self.max_frame.saturating_add(4) {
            return Some(Err(format!(
                "the task is over the serving process's message limit of {} bytes",
                self.max_frame
            )));
        }
        frame.extend_from_slice(&self.work.args);
        Some(Ok(()))
    }

    fn restart(&self, stop: Arc<dyn Stop>) -> bool {
        if self.ticket().is_over() {
            return false;
        }
        self.ticket().set_stop(stop);
        true
    }

    fn task(&self) -> &'static str {
        self.work.task.name()
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn attempt(&self) -> u32 {
        1
    }

    fn is_finished(&self) -> bool {
        self.ticket().is_over()
    }

    fn finish(&self, reply: Reply<'_>) -> bool {
        let ending = match reply {
            Reply::Output(bytes) => Ending::Output(bytes.to_vec()),
            Reply::Failed(bytes) => Ending::Failed(bytes.to_vec()),
            Reply::Panicked { message, location, backtrace } => Ending::Report(Report::Panicked {
                message: message.to_owned(),
                location: location.map(str::to_owned),
                backtrace: backtrace.map(str::to_owned),
            }),
            Reply::BadArguments(message) => {
                Ending::Report(Report::BadArguments(message.to_owned()))
            }
            Reply::UnknownTask => Ending::Report(Report::BadArguments(format!(
                "the serving process's worker has no task {}",
                self.task()
            ))),
            // Cancelled before it started.
            Reply::Skipped => return false,
            Reply::Unserializable { is_error, message } => {
                Ending::Report(Report::Unserializable { is_error, message: message.to_owned() })
            }
        };
        self.ticket().end(ending)
    }

    fn fail(&self, failure: Failure) -> bool {
        let report = match failure {
            Failure::Died(death) => Report::Died {
                pid: death.pid,
                reason: death.reason,
                stderr_tail: death.stderr_tail,
            },
            Failure::Arguments(message) => Report::BadArguments(message),
            Failure::Unavailable(reason) => Report::Unavailable(reason),
        };
        self.ticket().end(Ending::Report(report))
    }

    fn progress(&self) -> Arc<dyn Decode> {
        Arc::new(Forward(Arc::clone(self.ticket())))
    }

    fn has_timeout(&self) -> bool {
        self.work.timeout.is_some()
    }
}

/// A worker's progress message, passed on to the caller as it is.
struct Forward(Arc<Ticket>);

impl Decode for Forward {
    fn decode(&self, bytes: &[u8]) {
        self.0.progress(bytes.to_vec());
    }
}
