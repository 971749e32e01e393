//! The errors a call can end in: [`CallError`] on the caller's side, and the [`RemoteError`] the far
//! side sends back. A leaf: the byte streams and the typed calls both build on it.

use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kind::ErrorKind;
use crate::ContextId;

/// What went wrong on the far side of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The handler returned an error.
    Handler,
    /// The handler panicked; the context keeps serving.
    Panic,
    /// No handler is registered under the name.
    UnknownHandler,
    /// The request could not be decoded, or came with the wrong kind of stream.
    BadRequest,
    /// The caller may not call this context.
    Refused,
    /// The context is shutting down and takes no more calls.
    ShuttingDown,
    /// No route from the context that answered to the destination.
    NoRoute,
}

/// An error that happened in another context, carried back to the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: RemoteErrorKind,
    /// Name of the handler called.
    pub handler: String,
    /// The error's own message (for a panic, the panic message).
    pub message: String,
    /// The `source()` chain below `message`, outermost first.
    pub causes: Vec<String>,
    /// The context it happened in.
    pub context: ContextId,
    /// Where that context runs, e.g. `alice@web1 pid 4242`.
    pub origin: String,
    /// For a handler's error: its kind, when the handler said (a [`KindedError`](crate::KindedError), or a
    /// [`CallError`] it passed on).
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// The contexts the call went through to reach it, as the caller names them
    /// (`controller → gw1 → db1 (sudo postgres on db1)`); set on the caller's side.
    #[serde(default)]
    pub path: Option<String>,
}

impl RemoteError {
    /// What kind of failure it is (see [`CallError::kind`]).
    pub fn kind(&self) -> ErrorKind {
        match self.kind {
            RemoteErrorKind::Handler => self.error_kind.unwrap_or(ErrorKind::Handler),
            RemoteErrorKind::Panic => ErrorKind::Handler,
            RemoteErrorKind::UnknownHandler => ErrorKind::UnknownHandler,
            RemoteErrorKind::BadRequest => ErrorKind::BadRequest,
            RemoteErrorKind::Refused => ErrorKind::Refused,
            RemoteErrorKind::ShuttingDown => ErrorKind::ShuttingDown,
            RemoteErrorKind::NoRoute => ErrorKind::NoRoute,
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ctx, origin, handler) = (self.context, &self.origin, &self.handler);
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        match self.kind {
            RemoteErrorKind::Handler => write!(f, "{handler} failed in context {ctx} ({origin}): ")?,
            RemoteErrorKind::Panic => write!(f, "{handler} panicked in context {ctx} ({origin}): ")?,
            RemoteErrorKind::UnknownHandler => {
                write!(f, "context {ctx} ({origin}) has no handler named {handler:?}: ")?
            }
            RemoteErrorKind::BadRequest => write!(f, "context {ctx} ({origin}) refused a malformed {handler} call: ")?,
            RemoteErrorKind::Refused => write!(f, "context {ctx} ({origin}) refused {handler}: ")?,
            RemoteErrorKind::ShuttingDown => write!(f, "context {ctx} ({origin}) is shutting down: ")?,
            RemoteErrorKind::NoRoute => write!(f, "context {ctx} ({origin}) could not route {handler}: ")?,
        }
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl StdError for RemoteError {}

/// Why a call did not produce a response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The far side answered with an error.
    #[error(transparent)]
    Remote(Box<RemoteError>),
    /// The stream the call travelled on closed before the answer came.
    #[error("context {context} ({name}) disconnected: {reason}")]
    Disconnected {
        /// The context called.
        context: ContextId,
        /// Its name (method and host).
        name: String,
        /// Why the stream closed.
        reason: String,
    },
    /// This context has no route to the destination.
    #[error("no route to context {0}")]
    NoRoute(ContextId),
    /// No answer came in time (for a call with a stream: nothing moved for that long).
    #[error("{handler} in context {context} did not answer within {} s", after.as_secs_f32())]
    Timeout {
        /// The context called.
        context: ContextId,
        /// Handler called.
        handler: &'static str,
        /// How long the caller waited.
        after: std::time::Duration,
    },
    /// The request could not be encoded, or is larger than the maximum frame.
    #[error("could not encode a {handler} request: {reason}")]
    Encode {
        /// Handler called.
        handler: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The answer did not decode as the expected response type.
    #[error("could not decode the answer to {handler}: {reason}")]
    Decode {
        /// Handler called.
        handler: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A byte stream belonging to the call failed.
    #[error("stream of {handler}: {reason}")]
    Stream {
        /// Handler called.
        handler: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl From<RemoteError> for CallError {
    fn from(e: RemoteError) -> Self {
        CallError::Remote(Box::new(e))
    }
}

impl CallError {
    /// A remote error that happened in `context` and names no path yet gets the one `path` gives
    /// (the caller's names of the contexts it came through); any other error is left as it is.
    pub fn located(self, context: ContextId, path: impl FnOnce() -> String) -> CallError {
        match self {
            CallError::Remote(mut e) if e.context == context && e.path.is_none() => {
                e.path = Some(path());
                CallError::Remote(e)
            }
            other => other,
        }
    }

    /// What kind of failure it is, to branch on without reading the text. A handler's error has
    /// the kind the handler gave it ([`KindedError`](crate::KindedError)), or [`ErrorKind::Handler`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::Remote(e) => e.kind(),
            CallError::Disconnected { .. } => ErrorKind::Disconnected,
            CallError::NoRoute(_) => ErrorKind::NoRoute,
            CallError::Timeout { .. } => ErrorKind::TimedOut,
            CallError::Encode { .. } | CallError::Decode { .. } => ErrorKind::BadRequest,
            CallError::Stream { .. } => ErrorKind::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_error_reads_as_a_sentence() {
        let e = RemoteError {
            kind: RemoteErrorKind::Handler,
            handler: "fs.read".into(),
            message: "could not read /etc/x".into(),
            causes: vec!["permission denied".into()],
            context: 3,
            origin: "alice@web1 pid 42".into(),
            error_kind: None,
            path: None,
        };
        assert_eq!(
            e.to_string(),
            "fs.read failed in context 3 (alice@web1 pid 42): could not read /etc/x: permission denied"
        );
    }
}
