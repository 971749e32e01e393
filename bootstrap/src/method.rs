//! Methods: how a parent gets a byte stream with a freshly started agent on the far end.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use hypha_runtime::proto::{Hello, Init};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use crate::{handshake, BootError};

/// A boxed future, as [`Method::start`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The byte stream a method opened, and the process behind it, if this side owns one.
pub struct Transport {
    /// Bytes from the agent.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    /// Bytes to the agent.
    pub writer: Pin<Box<dyn AsyncWrite + Send>>,
    /// The local process carrying the stream (the agent itself, or an `ssh` client), to reap or
    /// kill when the context ends.
    pub process: Option<tokio::process::Child>,
    /// Bytes already read from `reader` (past a bootstrap stub's report).
    pub read_ahead: BytesMut,
    /// Bytes of agent uploaded to start it, or `None` if none were (cached, or a local spawn).
    pub uploaded: Option<u64>,
    /// What the far side writes to stderr, kept for error messages.
    pub stderr: Option<StderrTail>,
    /// The hash of the build started (the one the stub picked for the host), which the agent's
    /// Hello must carry; `None`: this executable.
    pub agent_hash: Option<String>,
}

impl Transport {
    /// A transport over `reader`/`writer` with nothing read ahead, uploaded or collected yet.
    pub fn new(
        reader: impl AsyncRead + Send + 'static,
        writer: impl AsyncWrite + Send + 'static,
        process: Option<tokio::process::Child>,
    ) -> Self {
        Transport {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
            process,
            read_ahead: BytesMut::new(),
            uploaded: None,
            stderr: None,
            agent_hash: None,
        }
    }

    /// The stream once a bootstrap stub has run on it: the bytes it read past the stub's report,
    /// whether it uploaded the agent, which build it started, and the far side's stderr if it was
    /// collected.
    pub fn after_stub(mut self, (outcome, rest): (crate::stub::Outcome, BytesMut), stderr: Option<StderrTail>) -> Self {
        self.read_ahead = rest;
        self.uploaded = outcome.uploaded;
        self.agent_hash = Some(outcome.hash);
        self.stderr = stderr;
        self
    }
}

/// The last few KiB a far side wrote to stderr (an ssh client's complaints, a loader's error).
#[derive(Clone, Debug)]
pub struct StderrTail {
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// True once the source has ended: everything it said is here.
    done: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for StderrTail {
    fn default() -> Self {
        StderrTail { kept: Default::default(), done: std::sync::Arc::new(tokio::sync::watch::channel(false).0) }
    }
}

impl StderrTail {
    const KEEP: usize = 8 << 10;

    /// Collect everything `stream` yields, in a task, until it ends.
    pub fn collect(mut stream: impl AsyncRead + Send + Unpin + 'static) -> Self {
        let tail = StderrTail::default();
        let sink = tail.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.push(&buf[..n]);
            }
            sink.finish();
        });
        tail
    }

    /// Append bytes, keeping only the last few KiB.
    pub fn push(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.extend_from_slice(bytes);
        let excess = kept.len().saturating_sub(Self::KEEP);
        kept.drain(..excess);
    }

    /// The source has ended.
    pub fn finish(&self) {
        self.done.send_replace(true);
    }

    /// What was collected, once the source has ended or `patience` has passed.
    pub async fn text(&self, patience: Duration) -> String {
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(patience, done.wait_for(|d| *d)).await;
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&kept).trim().to_owned()
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport").field("process", &self.process.as_ref().and_then(|c| c.id())).finish()
    }
}

/// How to start an agent somewhere. Implement it to add a method of your own.
pub trait Method: Send + Sync + fmt::Debug {
    /// Method and host, for names and errors: `local on web1`, `ssh alice@web2:22`.
    fn target(&self) -> String;

    /// Start an agent that will print the sync marker for `nonce`, and return the stream to it.
    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>>;

    /// Deadline for the handshake after [`Method::start`] returned.
    fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

impl<M: Method + ?Sized> Method for Box<M> {
    fn target(&self) -> String {
        (**self).target()
    }

    fn start<'a>(&'a self, nonce: &'a str) -> BoxFuture<'a, Result<Transport, BootError>> {
        (**self).start(nonce)
    }

    fn handshake_timeout(&self) -> Duration {
        (**self).handshake_timeout()
    }
}

/// An agent that finished its handshake.
#[derive(Debug)]
pub struct Booted {
    /// The stream, ready to attach to a router.
    pub transport: Transport,
    /// What the agent said about itself.
    pub hello: Hello,
    /// Bytes read past the Hello, to hand to the router.
    pub leftover: BytesMut,
}

/// Start an agent with `method`, check its Hello against the build started (the one the stub
/// picked for the host; this executable if the method ran none), and send it `init`.
pub async fn boot(
    method: &dyn Method,
    max_frame: usize,
    init: impl FnOnce(&Hello) -> Init,
) -> Result<Booted, BootError> {
    let nonce = handshake::nonce();
    let target = method.target();
    let mut transport = method.start(&nonce).await?;
    let own = || crate::exe_hash().map_err(|source| BootError::Io { target: target.clone(), source });
    let binary_hash = match &transport.agent_hash {
        Some(hash) => hash.as_str(),
        None => own()?,
    };
    let expect = handshake::Expect {
        nonce: &nonce,
        binary_hash,
        max_frame,
        timeout: method.handshake_timeout(),
        target: &target,
    };
    let (reader, writer) = (&mut transport.reader, &mut transport.writer);
    let read_ahead = std::mem::take(&mut transport.read_ahead);
    match handshake::parent(reader, writer, &expect, init, read_ahead).await {
        Ok((hello, leftover)) => Ok(Booted { transport, hello, leftover }),
        Err(e) => {
            if let Some(mut child) = transport.process.take() {
                // Killed and dropped: tokio reaps a dropped child in the background.
                let _ = child.start_kill();
            }
            Err(with_stderr(e, transport.stderr.as_ref()).await)
        }
    }
}

/// Start an agent through a command that runs a given program with its arguments on the far side
/// (`docker exec -i CONTAINER`, `kubectl exec -i POD --`, `nsenter -t PID -a --`, `chroot DIR`,
/// ...): `cmd` plus the bootstrap stub's argument vector ([`stub::argv`](crate::stub::argv)) is
/// run with piped stdio, the stub uploads the agent or finds it cached, and the stream is ready
/// for the handshake. What the command prints on stderr goes into errors. The building block of
/// methods of your own.
pub async fn through_command(
    mut cmd: tokio::process::Command,
    nonce: &str,
    target: &str,
    timeout: Duration,
) -> Result<Transport, BootError> {
    let builds =
        crate::builds::Builds::current().await.map_err(|source| BootError::Io { target: target.to_owned(), source })?;
    cmd.args(crate::stub::argv(nonce, &builds));
    let (mut child, mut stdin, mut stdout, stderr) = spawn_piped(cmd, target)?;
    let tail = StderrTail::collect(stderr);
    match crate::stub::run(&mut stdout, &mut stdin, BytesMut::new(), nonce, &builds, target, timeout).await {
        Ok(done) => Ok(Transport::new(stdout, stdin, Some(child)).after_stub(done, Some(tail))),
        Err(e) => {
            let _ = child.start_kill();
            Err(with_stderr(e, Some(&tail)).await)
        }
    }
}

/// Spawn `cmd` with stdin, stdout and stderr piped (killed if dropped), for a method that talks to
/// the program over them.
pub(crate) fn spawn_piped(
    mut cmd: tokio::process::Command,
    target: &str,
) -> Result<(tokio::process::Child, ChildStdin, ChildStdout, ChildStderr), BootError> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| BootError::start(target, format!("{program}: {e}"), Some(Box::new(e))))?;
    match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => Ok((child, stdin, stdout, stderr)),
        _ => Err(BootError::start(target, format!("{program}'s stdio was not piped"), None)),
    }
}

/// Add what the far side said on stderr to an error that does not say why by itself.
pub async fn with_stderr(err: BootError, stderr: Option<&StderrTail>) -> BootError {
    let Some(stderr) = stderr else { return err };
    // The stream usually ends a moment before the last of stderr has been read.
    let said = stderr.text(Duration::from_secs(1)).await;
    if said.is_empty() {
        return err;
    }
    match err {
        BootError::Exited { target, output } => {
            let output = if output.trim().is_empty() { said } else { format!("{}\n{said}", output.trim()) };
            BootError::Exited { target, output }
        }
        other => other,
    }
}
