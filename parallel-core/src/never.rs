//! [`Never`]: the error type of a task that cannot fail.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The error type of a task that cannot fail; no value of it exists.
///
/// `#[task]` uses it for a function that does not return a `Result`, so
/// [`TaskError::Failed`](crate::TaskError::Failed) cannot occur for such a task.
///
/// # Examples
///
/// ```
/// use parallel::{task, Never, Task};
///
/// #[task]
/// fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// fn error_type_of<T: Task<Error = Never>>() {}
///
/// fn main() {
///     error_type_of::<double::Task>();
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Never {}

impl fmt::Display for Never {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for Never {}
