//! The `local` method: the controller (or any agent) spawns its own binary as a child agent,
//! talking over the child's stdin and stdout.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::identity::exe_path;
use crate::method::{BoxFuture, Method, Transport};
use crate::{agent, BootError, Identity};

/// Pipe buffer asked for on the child's stdio: fewer, larger writes for bulk data.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Start a context as a child process on this host.
///
/// ```
/// use std::time::Duration;
/// use hypha_bootstrap::Local;
///
/// let m = Local::default().with_timeout(Duration::from_secs(5));
/// assert_eq!(m.timeout, Some(Duration::from_secs(5)));
/// ```
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Local {
    /// Executable to run; this process's own by default. Anything else must be a copy of it (the
    /// handshake checks the binary hash).
    pub program: Option<PathBuf>,
    /// Handshake deadline; 30 s by default.
    pub timeout: Option<Duration>,
}

impl Local {
    /// Run `program` instead of this process's own executable: a copy of it (the handshake
    /// checks the binary hash).
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Local {
        self.program = Some(program.into());
        self
    }

    /// Handshake deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Local {
        self.timeout = Some(timeout);
        self
    }
}

impl Method for Local {
    fn target(&self) -> String {
        format!("local on {}", Identity::current().host)
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let fail = |reason: String, source: std::io::Error| {
                BootError::start(self.target(), reason, Some(Box::new(source)))
            };
            let mut cmd = match &self.program {
                Some(p) => Command::new(p),
                None => {
                    // What is running, even if its path now names another file (see exe_path);
                    // ps shows the usual name.
                    let path = exe_path().map_err(|e| fail(format!("cannot find this executable: {e}"), e))?;
                    let mut cmd = Command::new(path);
                    if let Ok(name) = std::env::current_exe() {
                        cmd.arg0(name);
                    }
                    cmd
                }
            };
            let program = cmd.as_std().get_program().to_string_lossy().into_owned();
            let mut child = cmd
                .arg(agent::AGENT_FLAG)
                .arg(nonce)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                // Its own process group: a Ctrl-C at the terminal stops the controller, and the
                // agents then exit because their stdin closes, instead of dying mid-call.
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| fail(format!("{program}: {e}"), e))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(BootError::start(self.target(), "the child's stdio was not piped", None));
            };
            for fd in [stdin.as_raw_fd(), stdout.as_raw_fd()] {
                // SAFETY: fcntl on a pipe we own. Failure (an old kernel, a lower limit) only costs speed.
                unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
            }
            Ok(Transport::new(stdout, stdin, Some(child)))
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(30))
    }
}
