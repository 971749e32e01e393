//! Why a context could not be started.

use std::time::Duration;

/// A context did not start. Every variant names the target (method and host) it was for.
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
    },
    /// The host's key is not the one on record: nothing was sent.
    #[error("{target}: host key refused: {reason}")]
    HostKey {
        /// Method and host.
        target: String,
        /// Which key was expected and which one was presented.
        reason: String,
    },
    /// The host could not be reached (refused, unreachable, or no answer in time).
    #[error("{target}: cannot reach the host: {reason}")]
    Unreachable {
        /// Method and host.
        target: String,
        /// What failed.
        reason: String,
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
