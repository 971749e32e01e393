//! The `sudo` method: a context as another user on the same host.
//!
//! `sudo -S -p <marker> -u USER -H -- sh -c <stub> ...`. The password, if one is given, is written
//! only when sudo's prompt (the marker, on stderr) appears; with NOPASSWD no prompt comes and the
//! password is never sent. Without a password, `-n` makes sudo fail at once where it would ask.
//! A second prompt means the password was wrong: the attempt ends there, within seconds.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use hypha_runtime::Secret;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::builds::Builds;
use crate::method::{spawn_piped, BoxFuture, Method, StderrTail, Transport};
use crate::{stub, BootError, Identity};

/// What sudo prints when it wants the password (on stderr, thanks to `-S`).
const PROMPT: &str = "[hypha-sudo-password]";
/// How long sudo may take to authenticate (a wrong password costs it about two seconds).
const AUTH_DEADLINE: Duration = Duration::from_secs(15);

/// Start a context as `user` with sudo.
///
/// ```
/// use hypha_bootstrap::Sudo;
///
/// let m = Sudo::new("postgres").with_password("my own password");
/// assert!(!format!("{m:?}").contains("my own password"));
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sudo {
    /// The user to become.
    pub user: String,
    /// The password sudo asks for (the invoking user's), if it asks. Without one, sudo must not
    /// ask (NOPASSWD, or as root).
    pub password: Option<Secret<String>>,
    /// The sudo program.
    pub program: PathBuf,
    /// Deadline for the stub, the upload and the agent's handshake.
    pub timeout: Duration,
}

impl fmt::Debug for Sudo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_as_user(
            f,
            "Sudo",
            &self.user,
            self.password.as_ref().map(|p| p.expose().as_str()),
            &self.program,
            self.timeout,
        )
    }
}

impl Sudo {
    /// Become `user`, without a password, with `sudo` from the `PATH` and 60 s to start.
    pub fn new(user: impl Into<String>) -> Sudo {
        Sudo { user: user.into(), password: None, program: PathBuf::from("sudo"), timeout: Duration::from_secs(60) }
    }

    /// Answer sudo's prompt with `password` (the invoking user's) if it asks.
    pub fn with_password(mut self, password: impl Into<String>) -> Sudo {
        self.password = Some(Secret::new(password.into()));
        self
    }

    /// Run this sudo instead of the one on the `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Sudo {
        self.program = program.into();
        self
    }

    /// Deadline for the stub, the upload and the agent's handshake.
    pub fn with_timeout(mut self, timeout: Duration) -> Sudo {
        self.timeout = timeout;
        self
    }
}

impl Method for Sudo {
    fn target(&self) -> String {
        format!("sudo {} on {}", self.user, Identity::current().host)
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        Box::pin(async move {
            let target = self.target();
            let builds = Builds::current().await.map_err(|source| BootError::Io { target: target.clone(), source })?;
            let mut cmd = Command::new(&self.program);
            cmd.args(["-S", "-p", PROMPT, "-H", "-u", &self.user]);
            if self.password.is_none() {
                cmd.arg("-n");
            }
            cmd.arg("--").args(stub::argv(nonce, &builds));
            let (mut child, mut stdin, mut stdout, stderr) = spawn_piped(cmd, &target)?;
            let (tail, mut prompts) = watch_stderr(stderr);
            let auth = |reason: String| BootError::Auth { target: target.clone(), reason, source: None };

            // Until the stub speaks on stdout, sudo is still deciding; answer its prompt once.
            let mut buf = BytesMut::with_capacity(4096);
            let deadline = tokio::time::sleep(AUTH_DEADLINE);
            tokio::pin!(deadline);
            let mut asked = 0;
            loop {
                tokio::select! {
                    Some(()) = prompts.recv() => {
                        asked += 1;
                        match (&self.password, asked) {
                            (Some(password), 1) => {
                                let line = format!("{}\n", password.expose());
                                let sent = stdin.write_all(line.as_bytes()).await.and(stdin.flush().await);
                                sent.map_err(|source| BootError::Io { target: target.clone(), source })?;
                            }
                            (Some(_), _) => {
                                let _ = child.start_kill();
                                return Err(auth(format!("sudo refused the password for becoming {}", self.user)));
                            }
                            (None, _) => {
                                let _ = child.start_kill();
                                return Err(auth(format!("sudo wants a password to become {}, and none was given", self.user)));
                            }
                        }
                    }
                    read = stdout.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => {
                            let said = tail.text(Duration::from_secs(1)).await;
                            return Err(classify(&target, &self.user, said));
                        }
                        Ok(_) => break,
                    },
                    _ = &mut deadline => {
                        let _ = child.start_kill();
                        return Err(BootError::Timeout { target, stage: "sudo authentication", after: AUTH_DEADLINE });
                    }
                }
            }
            let done = stub::run(&mut stdout, &mut stdin, buf, nonce, &builds, &target, self.timeout).await?;
            Ok(Transport::new(stdout, stdin, Some(child)).after_stub(done, Some(tail)))
        })
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
    }
}

/// `Debug` for a method that becomes another user (sudo, su): the password is never shown.
pub(crate) fn debug_as_user(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    user: &str,
    password: Option<&str>,
    program: &std::path::Path,
    timeout: Duration,
) -> fmt::Result {
    f.debug_struct(name)
        .field("user", &user)
        .field("password", &password.map(|_| ".."))
        .field("program", &program)
        .field("timeout", &timeout)
        .finish()
}

/// Keep sudo's stderr, and say each time its prompt appears.
fn watch_stderr(mut stderr: tokio::process::ChildStderr) -> (StderrTail, mpsc::UnboundedReceiver<()>) {
    let tail = StderrTail::default();
    let sink = tail.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut scan = PromptScan::default();
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            for _ in 0..scan.feed(&buf[..n]) {
                let _ = tx.send(());
            }
            // The prompt is not kept in the tail: only what sudo says about why.
            sink.push(&buf[..n]);
        }
        sink.finish();
    });
    (tail, rx)
}

/// Finds sudo's prompt in its stderr, however the reads split it, holding at most a prompt's
/// length of it: stderr passes through here for the context's whole life.
#[derive(Debug, Default)]
struct PromptScan {
    /// The end of what was read, which may hold the start of a prompt.
    tail: Vec<u8>,
}

impl PromptScan {
    /// Take the next bytes read; how many prompts they completed.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        self.tail.extend_from_slice(bytes);
        let mut found = 0;
        while let Some(at) = self.tail.windows(PROMPT.len()).position(|w| w == PROMPT.as_bytes()) {
            found += 1;
            self.tail.drain(..at + PROMPT.len());
        }
        let keep = PROMPT.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        found
    }
}

fn classify(target: &str, user: &str, said: String) -> BootError {
    let said = said.replace(PROMPT, "");
    let said = said.trim().to_owned();
    let auth = |reason: String| BootError::Auth { target: target.into(), reason, source: None };
    if said.contains("a password is required") {
        auth(format!("sudo wants a password to become {user}, and none was given ({said})"))
    } else if said.contains("not in the sudoers") || said.contains("not allowed") || said.contains("may not run sudo") {
        auth(format!("may not sudo to {user}: {said}"))
    } else if said.contains("incorrect password") || said.contains("Sorry, try again") {
        auth(format!("sudo refused the password for becoming {user}: {said}"))
    } else {
        BootError::Exited { target: target.into(), output: said }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_found_across_reads_in_bounded_memory() {
        let mut scan = PromptScan::default();
        let (head, rest) = PROMPT.split_at(5);
        assert_eq!(scan.feed(format!("noise {head}").as_bytes()), 0);
        assert_eq!(scan.feed(rest.as_bytes()), 1);
        assert_eq!(scan.feed(format!("{PROMPT}x{PROMPT}").as_bytes()), 2);
        for _ in 0..10_000 {
            assert_eq!(scan.feed(&[b'z'; 1024]), 0);
        }
        assert!(scan.tail.len() < PROMPT.len(), "holds {} bytes", scan.tail.len());
    }

    #[test]
    fn the_password_never_prints() {
        let sudo = Sudo::new("bob").with_password("s3cret-pw");
        assert_eq!(format!("{sudo:?}"), r#"Sudo { user: "bob", password: Some(".."), program: "sudo", timeout: 60s }"#);
    }

    #[test]
    fn every_setting_has_a_builder() {
        let sudo = Sudo::new("bob").with_program("/opt/sudo").with_timeout(Duration::from_secs(5));
        assert_eq!((sudo.user.as_str(), sudo.password.as_ref().map(|p| p.expose().as_str())), ("bob", None));
        assert_eq!((sudo.program, sudo.timeout), (PathBuf::from("/opt/sudo"), Duration::from_secs(5)));
    }
}
