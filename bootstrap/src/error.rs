//! Why a context could not be started.

use std::time::Duration;

use hypha_runtime::ErrorKind;

/// The error under a [`BootError`], where there is one (an `io::Error`, a libssh2 error, a
/// [`DestinationError`](crate::DestinationError)...).
/// The error that made a start fail, as [`BootError::Start`] keeps it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A context did not start. Every variant names the target (method and host) it was for; its
/// text says what failed and why, and [`source`](std::error::Error::source) reaches the
/// underlying error where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The method could not start the agent process or reach the host.
    #[error("{target}: could not start the agent: {reason}")]
    Start {
        /// Method and host, e.g. `local on web1`.
        target: String,
        /// What failed.
        reason: String,
        /// The error that made it fail, if there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The context asked to start it (its via parent) could not, or could not be asked: the
    /// parent's failure (its kind, such as authentication or host key, is the failure's on the
    /// parent's side), or why the call to it failed.
    #[error("{target}: {source}")]
    Via {
        /// Method and host, and the parent.
        target: String,
        /// The failed call.
        #[source]
        source: Box<hypha_runtime::CallError>,
    },
    /// The agent's stream ended before the handshake finished.
    #[error("{target}: the agent ended before its handshake{}", said(output))]
    Exited {
        /// Method and host.
        target: String,
        /// What the far side printed before it ended (its own error message, if any).
        output: String,
    },
    /// A stage of the handshake did not finish in time.
    #[error("{target}: no {stage} within {after:?}")]
    Timeout {
        /// Method and host.
        target: String,
        /// What was awaited.
        stage: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// Both ends do not run the same protocol or the same binary.
    #[error("{target}: {what} mismatch: the agent has {theirs}, this side has {ours}")]
    Mismatch {
        /// Method and host.
        target: String,
        /// `protocol version` or `binary hash`.
        what: &'static str,
        /// This side's value.
        ours: String,
        /// The agent's value.
        theirs: String,
    },
    /// The agent's handshake bytes were not what the protocol says.
    #[error("{target}: garbled handshake: {reason}")]
    Garbled {
        /// Method and host.
        target: String,
        /// What was wrong.
        reason: String,
    },
    /// There is no build of this program for the host's architecture.
    #[error(
        "{target}: the host is {remote}, and this program has builds for {local} only: build it for {remote} \
         (as hypha's scripts/build-agents.sh {remote} does) and name the build with \
         Options::agent_for(\"{remote}\", PATH), or --agent {remote}=PATH"
    )]
    Arch {
        /// Method and host.
        target: String,
        /// The host's architecture (`uname -m`, normalized as `builds::normalize_arch` does).
        remote: String,
        /// The architectures there are builds for, comma-separated.
        local: String,
    },
    /// No directory on the host is both writable and allowed to run programs.
    #[error("{target}: no writable directory that may run programs (tried {tried})")]
    NoCacheDir {
        /// Method and host.
        target: String,
        /// The directories tried.
        tried: String,
    },
    /// The agent could not be installed in the host's cache directory (a fresh upload failed;
    /// when it was to replace a damaged cached agent, what was wrong with that one too).
    #[error("{target}: {}", install(dir, found.as_deref(), reason))]
    Install {
        /// Method and host.
        target: String,
        /// The cache directory.
        dir: String,
        /// What was wrong with the cached agent the upload was to replace, if one was there.
        found: Option<String>,
        /// What was sent, and what the stub said went wrong.
        reason: String,
    },
    /// The host refused every credential offered.
    #[error("{target}: authentication refused: {reason}")]
    Auth {
        /// Method and host.
        target: String,
        /// What the server or client said.
        reason: String,
        /// The error of the last credential that failed with one (the others are in `reason`).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The host's key is not the one on record: nothing was sent.
    #[error("{target}: host key refused: {reason}")]
    HostKey {
        /// Method and host.
        target: String,
        /// Which key was expected and which one was presented.
        reason: String,
        /// The error reading, checking or recording known_hosts, if there was one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The host could not be reached (refused, unreachable, or no answer in time).
    #[error("{target}: cannot reach the host: {reason}")]
    Unreachable {
        /// Method and host.
        target: String,
        /// What failed.
        reason: String,
        /// The error connecting, if there was one (none for a deadline, or for what an `ssh` client said).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Reading or writing the stream failed.
    #[error("{target}: I/O error during the handshake: {source}")]
    Io {
        /// Method and host.
        target: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BootError {
    /// What kind of failure it is, to branch on without reading the text (the same kinds as
    /// [`CallError::kind`](hypha_runtime::CallError::kind)).
    pub fn kind(&self) -> ErrorKind {
        match self {
            BootError::Start { .. }
            | BootError::Exited { .. }
            | BootError::Install { .. }
            | BootError::Garbled { .. } => ErrorKind::Start,
            BootError::Timeout { .. } => ErrorKind::TimedOut,
            BootError::Mismatch { .. } => ErrorKind::Mismatch,
            BootError::Arch { .. } => ErrorKind::Architecture,
            BootError::NoCacheDir { .. } => ErrorKind::NoCacheDir,
            BootError::Auth { .. } => ErrorKind::Authentication,
            BootError::HostKey { .. } => ErrorKind::HostKey,
            BootError::Unreachable { .. } => ErrorKind::Unreachable,
            BootError::Io { .. } => ErrorKind::Io,
            BootError::Via { source, .. } => source.kind(),
        }
    }

    /// [`BootError::Start`] for `target`: `reason`, caused by `source`.
    pub fn start(target: impl Into<String>, reason: impl Into<String>, source: Option<Cause>) -> BootError {
        BootError::Start { target: target.into(), reason: reason.into(), source }
    }
}

fn install(dir: &str, found: Option<&str>, reason: &str) -> String {
    match found {
        Some(found) => format!("the cached agent in {dir} was {found}, and a fresh upload failed: {reason}"),
        None => format!("installing the agent in {dir} failed: {reason}"),
    }
}

fn said(output: &str) -> String {
    let text = output.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; it said: {text}")
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn every_variant_has_its_kind() {
        let t = || "ssh alice@web1:22".to_owned();
        let text = || "why".to_owned();
        let cases = [
            (BootError::start(t(), "spawning", None), ErrorKind::Start),
            (BootError::Exited { target: t(), output: text() }, ErrorKind::Start),
            (BootError::Install { target: t(), dir: text(), found: None, reason: text() }, ErrorKind::Start),
            (BootError::Garbled { target: t(), reason: text() }, ErrorKind::Start),
            (
                BootError::Timeout { target: t(), stage: "handshake", after: Duration::from_secs(1) },
                ErrorKind::TimedOut,
            ),
            (
                BootError::Mismatch { target: t(), what: "binary hash", ours: text(), theirs: text() },
                ErrorKind::Mismatch,
            ),
            (
                BootError::Arch { target: t(), remote: "aarch64".into(), local: "x86_64".into() },
                ErrorKind::Architecture,
            ),
            (BootError::NoCacheDir { target: t(), tried: text() }, ErrorKind::NoCacheDir),
            (BootError::Auth { target: t(), reason: text(), source: None }, ErrorKind::Authentication),
            (BootError::HostKey { target: t(), reason: text(), source: None }, ErrorKind::HostKey),
            (BootError::Unreachable { target: t(), reason: text(), source: None }, ErrorKind::Unreachable),
            (BootError::Io { target: t(), source: std::io::Error::other("x") }, ErrorKind::Io),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn the_underlying_error_is_the_source_and_stays_in_the_text() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = refused.to_string();
        let err = BootError::Unreachable {
            target: "ssh alice@web1:22".into(),
            reason: text.clone(),
            source: Some(Box::new(refused)),
        };
        let source = err.source().expect("a source");
        let io = source.downcast_ref::<std::io::Error>().expect("the io::Error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(err.to_string(), format!("ssh alice@web1:22: cannot reach the host: {text}"));
        assert!(BootError::start("local on h", "no", None).source().is_none());
    }
}
