//! What kind of failure an error is, for callers that branch on it without reading its text.

use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of failure a caller can branch on, the same for a call ([`crate::CallError::kind`])
/// and a start (`BootError::kind`), wherever in the tree it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A link on the way closed: the context, or a hop to it, is gone.
    Disconnected,
    /// A deadline passed.
    TimedOut,
    /// The context called refused the caller (it may not call there).
    Refused,
    /// A handler returned an error or panicked.
    Handler,
    /// No handler (or no method) is registered under the name asked for.
    UnknownHandler,
    /// A request or answer that does not encode or decode, or a malformed call.
    BadRequest,
    /// The context is shutting down and takes no more calls.
    ShuttingDown,
    /// No route to the context.
    NoRoute,
    /// The host refused every credential offered.
    Authentication,
    /// The host's key is not the one on record.
    HostKey,
    /// The host could not be reached.
    Unreachable,
    /// There is no build of the program for the host's architecture.
    Architecture,
    /// No directory on the host is both writable and allowed to run programs.
    NoCacheDir,
    /// The agent could not be started or installed, or ended before its handshake.
    Start,
    /// The agent runs another protocol or another build than expected.
    Mismatch,
    /// Reading or writing failed.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Refused => "refused",
            ErrorKind::Handler => "handler error",
            ErrorKind::UnknownHandler => "unknown handler",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::ShuttingDown => "shutting down",
            ErrorKind::NoRoute => "no route",
            ErrorKind::Authentication => "authentication refused",
            ErrorKind::HostKey => "host key refused",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Architecture => "no build for the architecture",
            ErrorKind::NoCacheDir => "no cache directory",
            ErrorKind::Start => "start failed",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Io => "I/O error",
        })
    }
}

/// An error a handler returns with its kind attached, so the caller's
/// [`CallError::kind`](crate::CallError::kind) is that kind rather than [`ErrorKind::Handler`].
/// Its text and `source()` chain are the inner error's.
#[derive(Debug)]
pub struct KindedError {
    kind: ErrorKind,
    inner: Box<dyn StdError + Send + Sync>,
}

impl KindedError {
    /// `inner`, of kind `kind`.
    pub fn new(kind: ErrorKind, inner: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        KindedError { kind, inner: inner.into() }
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for KindedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl StdError for KindedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}
