//! `Exec`: a method of one's own, registered by name like the built-in ones. It starts the agent
//! through any command that runs a program with its arguments somewhere else, as `docker exec -i`,
//! `kubectl exec -i`, `nsenter` or `chroot` do; hypha's bootstrap stub then uploads the agent (or
//! finds it cached) on the far side, so nothing needs to be installed there.

use std::time::Duration;

use hypha::bootstrap::{through_command, BoxFuture, Transport};
use hypha::{BootError, Method, Portable};
use serde::{Deserialize, Serialize};

/// Run the agent as `PROGRAM ARGS... sh -c <stub> ...`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Exec {
    /// The command, and the arguments it takes before the program it is to run.
    pub(crate) command: Vec<String>,
    /// Deadline for the stub, the upload and the handshake.
    pub(crate) timeout: Duration,
}

impl Exec {
    /// Through `command`, for example `["nsenter", "-t", "4242", "-a", "--"]`.
    pub(crate) fn new<S: Into<String>>(command: impl IntoIterator<Item = S>) -> Self {
        Exec { command: command.into_iter().map(Into::into).collect(), timeout: Duration::from_secs(60) }
    }
}

impl Method for Exec {
    fn target(&self) -> String {
        format!("exec {}", self.command.join(" "))
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let Some((program, args)) = self.command.split_first() else {
                return Err(BootError::start(self.target(), "an empty command", None));
            };
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args);
            through_command(cmd, nonce, &self.target(), self.timeout).await
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

/// Its name, the same in every copy of the program: a context asked to start an `Exec` child
/// finds the method under it.
impl Portable for Exec {
    const NAME: &'static str = "example.exec";
}
