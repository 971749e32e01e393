//! The `openssh` method: the system `ssh` client as the transport.
//!
//! `ssh -T -o BatchMode=yes [options] DESTINATION 'sh -c <stub> ...'`: everything in the user's
//! `~/.ssh/config` (ProxyJump, ControlMaster, IdentityFile, aliases) applies unchanged. BatchMode
//! means no prompts: keys and agents work, passwords do not (use the `ssh` method for those).

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use crate::builds::Builds;
use crate::forward::{Agent, AgentLoans};
use crate::method::{spawn_piped, with_stderr, BoxFuture, Method, StderrTail, Transport};
use crate::{stub, BootError};

/// What to do with the host's key.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum HostKeyPolicy {
    /// Refuse a host whose key is not on record (the default).
    #[default]
    Enforce,
    /// Record the key of a host seen for the first time; refuse a changed one.
    AcceptNew,
    /// Accept any key. For throw-away test hosts only.
    Ignore,
}

/// Start a context over the system `ssh` client.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OpenSsh {
    /// `[user@]host`, or an alias from `~/.ssh/config`.
    pub destination: String,
    /// Port, if not the configured one.
    pub port: Option<u16>,
    /// Private key to offer (`-i`).
    pub identity: Option<PathBuf>,
    /// The ssh-agent the client asks (its `SSH_AUTH_SOCK`). Started via another context, the
    /// client is lent this host's agent for the start, through a relay.
    pub agent: Agent,
    /// known_hosts file to check against (and record into, with [`HostKeyPolicy::AcceptNew`]).
    pub known_hosts: Option<PathBuf>,
    /// Host-key policy; `None` leaves it to the ssh configuration (whose default is to ask, which
    /// BatchMode turns into a refusal).
    pub host_key: Option<HostKeyPolicy>,
    /// Deadline for the TCP connection (`ConnectTimeout`).
    pub connect_timeout: Duration,
    /// Deadline for the stub, the upload and the agent's handshake.
    pub timeout: Duration,
    /// Jump hosts, `[user@]host[:port]`, passed through in order (`-J`).
    pub jump: Vec<String>,
    /// Further arguments for `ssh`, before the destination (`-F`, `-o Cipher=...`...).
    pub args: Vec<String>,
    /// The client to run.
    pub program: PathBuf,
}

impl OpenSsh {
    /// Defaults for `destination`: the configured port and keys, 10 s to connect, 60 s to start.
    pub fn new(destination: impl Into<String>) -> Self {
        OpenSsh {
            destination: destination.into(),
            port: None,
            identity: None,
            agent: Agent::Env,
            known_hosts: None,
            host_key: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            jump: Vec::new(),
            args: Vec::new(),
            program: PathBuf::from("ssh"),
        }
    }

    fn command(&self, remote: &str) -> Result<Command, BootError> {
        let mut cmd = Command::new(&self.program);
        let socket = self.agent.socket().map_err(|source| BootError::Io { target: self.target(), source })?;
        if let Some(socket) = socket {
            cmd.env("SSH_AUTH_SOCK", socket);
        }
        cmd.arg("-T").args(["-o", "BatchMode=yes"]);
        cmd.arg("-o").arg(format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)));
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = &self.identity {
            cmd.arg("-i").arg(identity).args(["-o", "IdentitiesOnly=yes"]);
        }
        if let Some(known) = &self.known_hosts {
            cmd.arg("-o").arg(format!("UserKnownHostsFile={}", known.display()));
        }
        let policy: &[&str] = match self.host_key {
            Some(HostKeyPolicy::Enforce) => &["-o", "StrictHostKeyChecking=yes"],
            Some(HostKeyPolicy::AcceptNew) => &["-o", "StrictHostKeyChecking=accept-new"],
            Some(HostKeyPolicy::Ignore) => &["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"],
            None => &[],
        };
        cmd.args(policy);
        if !self.jump.is_empty() {
            cmd.arg("-J").arg(self.jump.join(","));
        }
        cmd.args(&self.args).arg("--").arg(&self.destination).arg(remote);
        Ok(cmd)
    }

    /// Ready to run on another host (the context `loans` are made to): the agent is lent for the
    /// start; files (identity, known hosts, configuration) are that host's.
    pub fn for_remote(mut self, loans: &mut AgentLoans) -> std::io::Result<OpenSsh> {
        self.agent = std::mem::take(&mut self.agent).lend(loans)?.unwrap_or_default();
        Ok(self)
    }
}

impl Method for OpenSsh {
    fn target(&self) -> String {
        match self.port {
            Some(port) => format!("openssh {}:{port}", self.destination),
            None => format!("openssh {}", self.destination),
        }
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let target = self.target();
            let builds = Builds::current().await.map_err(|source| BootError::Io { target: target.clone(), source })?;
            let (mut child, mut stdin, mut stdout, stderr) =
                spawn_piped(self.command(&stub::command(nonce, &builds))?, &target)?;
            let tail = StderrTail::collect(stderr);
            let done =
                match stub::run(&mut stdout, &mut stdin, Default::default(), nonce, &builds, &target, self.timeout)
                    .await
                {
                    Ok(done) => done,
                    Err(e) => {
                        let _ = child.start_kill();
                        return Err(classify(with_stderr(e, Some(&tail)).await));
                    }
                };
            Ok(Transport::new(stdout, stdin, Some(child)).after_stub(done, Some(tail)))
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

/// Name the cause when the ssh client said what went wrong before the stub could run.
fn classify(err: BootError) -> BootError {
    let BootError::Exited { target, output } = err else { return err };
    let said = output.as_str();
    let has = |needle: &str| said.contains(needle);
    if has("Host key verification failed") || has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("host key for") {
        BootError::HostKey { target, reason: output }
    } else if has("Permission denied") || has("Too many authentication failures") {
        BootError::Auth { target, reason: output }
    } else if has("Connection timed out")
        || has("Connection refused")
        || has("No route to host")
        || has("Network is unreachable")
        || has("Could not resolve hostname")
        || has("Operation timed out")
    {
        BootError::Unreachable { target, reason: output }
    } else {
        BootError::Exited { target, output }
    }
}
