//! [`RemoteError`]: any `std::error::Error`, kept in a form that crosses the process boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An error from a task, kept as its type name, message and chain of sources.
///
/// It lets `?` work in a task whose own errors are not serde types: every
/// `std::error::Error + Send + Sync + 'static` converts into it, keeping the three things a caller
/// needs to understand the failure on the other side of a process boundary. Like `anyhow::Error`,
/// it is not itself a `std::error::Error` (that impl would collide with the blanket `From`).
///
/// # Examples
///
/// ```
/// use parallel::{task, RemoteError, TaskError};
///
/// #[task]
/// fn read_number(text: String) -> Result<i64, RemoteError> {
///     Ok(text.trim().parse::<i64>()?)
/// }
///
/// fn main() {
///     match read_number::dispatch("seven".into()).join() {
///         Err(TaskError::Failed(error)) => {
///             assert_eq!(error.type_name(), "core::num::error::ParseIntError");
///             assert_eq!(error.message(), "invalid digit found in string");
///         }
///         other => panic!("{other:?}"),
///     }
/// }
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    type_name: String,
    message: String,
    sources: Vec<String>,
}

impl RemoteError {
    /// An error with a message and no source, for failures that have no error type of their own.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::RemoteError::msg("disk full");
    /// assert_eq!(error.to_string(), "disk full");
    /// assert_eq!(error.type_name(), "parallel::RemoteError");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        RemoteError {
            type_name: "parallel::RemoteError".to_owned(),
            message: message.to_string(),
            sources: Vec::new(),
        }
    }

    /// The Rust type name of the original error, e.g. `std::io::error::Error`.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::RemoteError::from(std::fmt::Error);
    /// assert_eq!(error.type_name(), "core::fmt::Error");
    /// ```
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The original error's `Display` output.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parallel::RemoteError::from(std::fmt::Error);
    /// assert_eq!(error.message(), "an error occurred when formatting an argument");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The messages of the original error's sources, outermost first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io;
    ///
    /// let inner = io::Error::new(io::ErrorKind::Other, "cable unplugged");
    /// let outer = io::Error::new(io::ErrorKind::Other, Wrapper(inner));
    /// let error = parallel::RemoteError::from(outer);
    /// assert_eq!(error.sources().collect::<Vec<_>>(), ["cable unplugged"]);
    ///
    /// #[derive(Debug)]
    /// struct Wrapper(io::Error);
    /// impl std::fmt::Display for Wrapper {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("network down")
    ///     }
    /// }
    /// impl std::error::Error for Wrapper {
    ///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
    ///         Some(&self.0)
    ///     }
    /// }
    /// ```
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(String::as_str)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for RemoteError {
    fn from(error: E) -> Self {
        let mut sources = Vec::new();
        let mut next = error.source();
        while let Some(source) = next {
            sources.push(source.to_string());
            next = source.source();
        }
        RemoteError {
            type_name: std::any::type_name::<E>().to_owned(),
            message: error.to_string(),
            sources,
        }
    }
}

/// The message, followed by each source after a colon, on one line.
impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for source in &self.sources {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteError")
            .field("type_name", &self.type_name)
            .field("message", &self.message)
            .field("sources", &self.sources)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|layer| layer as _)
        }
    }

    #[test]
    fn keeps_type_message_and_source_chain() {
        let error =
            Layer("outer", Some(Box::new(Layer("middle", Some(Box::new(Layer("inner", None)))))));
        let remote = RemoteError::from(error);
        assert!(remote.type_name().ends_with("::Layer"), "{}", remote.type_name());
        assert_eq!(remote.message(), "outer");
        assert_eq!(remote.sources().collect::<Vec<_>>(), ["middle", "inner"]);
        assert_eq!(remote.to_string(), "outer: middle: inner");
    }

    #[test]
    fn question_mark_converts() {
        fn open() -> Result<(), RemoteError> {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
            Ok(())
        }
        let error = open().unwrap_err();
        assert_eq!(error.type_name(), "std::io::error::Error");
        assert_eq!(error.message(), "no such file");
    }

    #[test]
    fn round_trips_through_serde() {
        let remote = RemoteError::from(Layer("outer", Some(Box::new(Layer("inner", None)))));
        let json = serde_json::to_string(&remote).unwrap();
        assert_eq!(serde_json::from_str::<RemoteError>(&json).unwrap(), remote);
    }
}
