//! The `su` method: a context as another user, with that user's password, through a terminal.
//!
//! su reads the password from its controlling terminal, so the method opens a pty, starts
//! `su -s /bin/sh USER -c '<stub>'` in a new session with the pty as its controlling terminal, and
//! answers the prompt once. A second prompt, or "Authentication failure", is a clear error. The stub
//! switches the terminal to raw mode first thing, so the upload and the agent's frames cross it
//! unchanged.

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use hypha_runtime::Secret;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::builds::Builds;
use crate::fdio::FdStream;
use crate::method::{BoxFuture, Method, Transport};
use crate::sudo::debug_as_user;
use crate::{stub, BootError, Identity};

/// How long su may take to authenticate (a wrong password costs it a few seconds).
const AUTH_DEADLINE: Duration = Duration::from_secs(15);

/// Start a context as `user` with su.
///
/// ```
/// use hypha_bootstrap::Su;
///
/// let m = Su::new("bob").with_password("bob's password");
/// assert!(!format!("{m:?}").contains("bob's password"));
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Su {
    /// The user to become.
    pub user: String,
    /// The password su asks for (the target user's own; root is not asked).
    pub password: Option<Secret<String>>,
    /// The su program.
    pub program: PathBuf,
    /// Deadline for the stub, the upload and the agent's handshake.
    pub timeout: Duration,
}

impl fmt::Debug for Su {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_as_user(
            f,
            "Su",
            &self.user,
            self.password.as_ref().map(|p| p.expose().as_str()),
            &self.program,
            self.timeout,
        )
    }
}

impl Su {
    /// Become `user`, without a password (as root, which su does not ask), with `su` from the
    /// `PATH` and 60 s to start.
    pub fn new(user: impl Into<String>) -> Su {
        Su { user: user.into(), password: None, program: PathBuf::from("su"), timeout: Duration::from_secs(60) }
    }

    /// Answer su's prompt with `password` (the target user's).
    pub fn with_password(mut self, password: impl Into<String>) -> Su {
        self.password = Some(Secret::new(password.into()));
        self
    }

    /// Run this su instead of the one on the `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Su {
        self.program = program.into();
        self
    }

    /// Deadline for the stub, the upload and the agent's handshake.
    pub fn with_timeout(mut self, timeout: Duration) -> Su {
        self.timeout = timeout;
        self
    }
}

/// A new pty: (master, slave).
fn openpty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors; name, termios and winsize may be null.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

impl Method for Su {
    fn target(&self) -> String {
        format!("su {} on {}", self.user, Identity::current().host)
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let target = self.target();
            let io = |source| BootError::Io { target: target.clone(), source };
            let builds = Builds::current().await.map_err(io)?;
            let (master, slave) = openpty().map_err(io)?;
            let command = stub::command(nonce, &builds);
            let mut cmd = Command::new(&self.program);
            cmd.args(["-s", "/bin/sh", &self.user, "-c", &command]);
            cmd.stdin(Stdio::from(slave.try_clone().map_err(io)?))
                .stdout(Stdio::from(slave.try_clone().map_err(io)?))
                .stderr(Stdio::from(slave))
                .kill_on_drop(true);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|e| {
                BootError::start(target.clone(), format!("{}: {e}", self.program.display()), Some(Box::new(e)))
            })?;
            let input = FdStream::new(master.try_clone().map_err(io)?).map_err(io)?;
            let mut output = FdStream::new(master).map_err(io)?;
            let mut reader = input;
            let auth = |reason: String| BootError::Auth { target: target.clone(), reason, source: None };

            // Until the stub speaks, su is authenticating: answer its prompt once.
            let mut buf = BytesMut::with_capacity(4096);
            let mut answered = false;
            let prefix = format!("HYPHA-STUB {nonce} ");
            let deadline = tokio::time::Instant::now() + AUTH_DEADLINE;
            loop {
                let said = String::from_utf8_lossy(&buf).into_owned();
                if said.contains(&prefix) {
                    break;
                }
                if said.contains("Authentication failure") || (answered && said.matches("assword").count() > 1) {
                    return Err(auth(format!("su refused the password for {}", self.user)));
                }
                if said.contains("assword") && !answered {
                    let Some(password) = &self.password else {
                        return Err(auth(format!("su wants {}'s password, and none was given", self.user)));
                    };
                    output.write_all(format!("{}\n", password.expose()).as_bytes()).await.map_err(io)?;
                    answered = true;
                }
                buf.reserve(1024);
                match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    // A pty whose other side is gone reads as an error (EIO), not as end of file.
                    Ok(_) => {
                        let said = String::from_utf8_lossy(&buf).replace("Password:", "").trim().to_owned();
                        if said.contains("does not exist") || said.contains("Authentication failure") {
                            return Err(auth(said));
                        }
                        return Err(BootError::Exited { target: target.clone(), output: said });
                    }
                    Err(_) => {
                        return Err(BootError::Timeout { target, stage: "su authentication", after: AUTH_DEADLINE })
                    }
                }
            }
            // Everything before the stub's report (the prompt, su's noise) is not ours.
            let at = buf.windows(prefix.len()).position(|w| w == prefix.as_bytes()).unwrap_or(0);
            let _ = buf.split_to(at);
            let done = stub::run(&mut reader, &mut output, buf, nonce, &builds, &target, self.timeout).await?;
            Ok(Transport::new(reader, output, Some(child)).after_stub(done, None))
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let su = Su::new("bob").with_password("s3cret-pw");
        assert_eq!(format!("{su:?}"), r#"Su { user: "bob", password: Some(".."), program: "su", timeout: 60s }"#);
    }

    #[test]
    fn every_setting_has_a_builder() {
        let su = Su::new("bob").with_program("/opt/su").with_timeout(Duration::from_secs(5));
        assert_eq!((su.user.as_str(), su.password.as_ref().map(|p| p.expose().as_str())), ("bob", None));
        assert_eq!((su.program, su.timeout), (PathBuf::from("/opt/su"), Duration::from_secs(5)));
    }

    #[test]
    fn a_pty_opens() {
        use std::os::fd::AsRawFd;
        let (master, slave) = openpty().unwrap();
        assert!(master.as_raw_fd() >= 0 && slave.as_raw_fd() >= 0);
    }
}
