//! [`Backend`]: where a pool runs its tasks.

/// Where a [`Pool`](crate::Pool) runs its tasks.
///
/// # Examples
///
/// ```
/// use parallel::{Backend, Pool};
///
/// let pool = Pool::builder().backend(Backend::Thread).workers(2).build().unwrap();
/// assert_eq!(pool.backend(), Backend::Thread);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Worker threads of a rayon pool inside this process: the cheapest round trip; a panic is
    /// caught, but a crash or a hang in a task takes the process with it.
    Thread,
    /// Child processes started from this same executable (needs the `process` feature): every
    /// task's arguments and result cross a pipe through serde; a crash kills only its worker, and
    /// a timeout really stops the task.
    Process,
    /// Serving copies of this program on other machines, through a NATS JetStream server (needs
    /// the `cluster` feature and [`PoolBuilder::cluster`](crate::PoolBuilder::cluster)): each
    /// task is published into the server's stream and runs on a slot of a serving process that
    /// has the same task with the same signature.
    Cluster,
}

impl Backend {
    /// Parses a `PARALLEL_BACKEND` value: `thread`, `process` or `cluster`, in any case.
    pub(crate) fn parse(value: &str) -> Option<Backend> {
        [Backend::Thread, Backend::Process, Backend::Cluster]
            .into_iter()
            .find(|backend| value.eq_ignore_ascii_case(&format!("{backend:?}")))
    }
}
