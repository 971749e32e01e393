//! The process service (remoto's `process.run` / `process.check`): run a command in a context.
//!
//! `hypha.process` ([`Run`]) is a duplex call: the handler starts the command in a process group
//! of its own, feeds it the caller's bytes on stdin (those of the request first, then the call's
//! upstream until the caller ends it), and sends its output as typed [`Line`]s, in order of
//! arrival, downstream (so memory stays bounded by the flow-control window, however much it
//! prints); its answer is the [`Exit`]. A timeout, a dropped call or a lost caller kills the whole
//! group (the command and whatever it forked): nothing keeps running on the host.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hypha_runtime::{ByteReceiver, ByteSender, Cx, HandlerError, ItemSender, Request};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::Identity;

/// Longest line sent as one: a longer one arrives in pieces of this size.
pub const MAX_LINE: usize = 64 << 10;

/// A command to run in a context.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Command {
    /// The program and its arguments (for [`Command::shell`], `sh -c STRING`).
    pub argv: Vec<String>,
    /// Variables to set in its environment (on top of the context's).
    pub env: Vec<(String, String)>,
    /// Its working directory (the context's, by default).
    pub cwd: Option<PathBuf>,
    /// Bytes for its stdin, first (empty, by default). Its stdin closes after them, unless the
    /// caller streams more (`Context::spawn`).
    pub stdin: Vec<u8>,
    /// Kill it (and everything it started) after this long.
    pub timeout: Option<Duration>,
}

impl Command {
    /// Run `argv[0]` with the rest as its arguments, no shell involved.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Command { argv: argv.into_iter().map(Into::into).collect(), ..Command::default() }
    }

    /// Run `script` with `sh -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Command::new(["sh".to_owned(), "-c".to_owned(), script.into()])
    }

    /// Set `key` to `value` in its environment.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run it in `dir`.
    pub fn with_cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Give it `bytes` on stdin.
    pub fn with_stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Kill it after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The program, for messages.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// True for exit status 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit status {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a command printed, without its newline (a line longer than [`MAX_LINE`] arrives in
/// pieces).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Where it was printed.
    pub stream: Stream,
    /// What, as UTF-8 (invalid bytes replaced).
    pub text: String,
}

/// What [`Run`] printed and how it ended, as remoto's `process.check` returns it: stdout lines,
/// stderr lines (newlines removed), and the exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Its stdout, line by line.
    pub stdout: Vec<String>,
    /// Its stderr, line by line.
    pub stderr: Vec<String>,
    /// How it ended.
    pub exit: Exit,
}

/// Most output `check` keeps (a command that prints more fails the check: stream it instead).
pub const MAX_OUTPUT: usize = 64 << 20;

/// Run a command in the context called: a duplex call, stdin up, [`Line`]s down.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run(pub Command);

impl Request for Run {
    type Response = Exit;
    const NAME: &'static str = "hypha.process";
}

/// Kills a process group when dropped, unless told it is done.
struct Group(Option<i32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg has no memory-safety preconditions; the group is the child's own.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `hypha.process` handler.
pub(crate) async fn serve(Run(cmd): Run, _: Cx, input: ByteReceiver, tx: ByteSender) -> Result<Exit, HandlerError> {
    let mut tx = ItemSender::<Line>::new(tx);
    let host = &Identity::current().host;
    let program = cmd.program().to_owned();
    let Some((first, rest)) = cmd.argv.split_first() else {
        return Err(format!("{host}: an empty command").into());
    };
    let mut child = tokio::process::Command::new(first);
    child.args(rest).envs(cmd.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &cmd.cwd {
        child.current_dir(dir);
    }
    child.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    if let Some(limit) = crate::limits::for_programs() {
        // SAFETY: between fork and exec the closure makes one system call, which is
        // async-signal-safe, and touches no memory but its own copy of `limit`.
        unsafe {
            child.pre_exec(move || {
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    }
    let mut child = child.spawn().map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "no such program".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        HandlerError::from(format!("{host}: {program}: {what}"))
    })?;
    let mut group = Group(child.id().map(|pid| pid as i32));
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(format!("{host}: {program}: its stdio was not piped").into());
    };
    let first = cmd.stdin;
    // Ends with the command (or with the caller's input): stdin closes when this returns.
    let feed = tokio::spawn(async move {
        let mut input = input;
        if stdin.write_all(&first).await.is_err() {
            return;
        }
        while let Ok(Some(chunk)) = input.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let _feed = AbortOnDrop(feed);
    let deadline = async {
        match cmd.timeout {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let (mut out, mut err) = (Splitter::new(Stream::Stdout), Splitter::new(Stream::Stderr));
    let (mut out_open, mut err_open) = (true, true);
    let (mut out_buf, mut err_buf) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
    while out_open || err_open {
        let mut batch = Vec::new();
        tokio::select! {
            n = read_some(&mut stdout, &mut out_buf, out_open) => match n {
                0 => { out_open = false; out.finish(&mut batch) }
                n => out.push(&out_buf[..n], &mut batch),
            },
            n = read_some(&mut stderr, &mut err_buf, err_open) => match n {
                0 => { err_open = false; err.finish(&mut batch) }
                n => err.push(&err_buf[..n], &mut batch),
            },
            () = &mut deadline => {
                group.kill();
                let after = cmd.timeout.unwrap_or_default();
                return Err(format!("{host}: {program}: timed out after {after:?}, killed with everything it started").into());
            }
            why = tx.closed() => {
                // The caller has gone: so does the command.
                group.kill();
                return Err(format!("{host}: {program}: the caller has gone ({why})").into());
            }
        }
        if !batch.is_empty() {
            if let Err(e) = tx.send_all(&batch).await {
                group.kill();
                return Err(format!("{host}: {program}: the caller has gone ({e})").into());
            }
        }
    }
    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| HandlerError::from(format!("{host}: {program}: {e}")))?,
        () = &mut deadline => {
            group.kill();
            return Err(format!("{host}: {program}: timed out, killed with everything it started").into());
        }
    };
    // It ended by itself: what it left behind in its group may go on (a daemon it started).
    group.0 = None;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Read what is there, or wait forever on a closed stream (so `select!` skips it).
async fn read_some(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8], open: bool) -> usize {
    if !open {
        return std::future::pending().await;
    }
    r.read(buf).await.unwrap_or(0)
}

/// Splits one stream's bytes into [`Line`]s.
struct Splitter {
    stream: Stream,
    partial: Vec<u8>,
}

impl Splitter {
    fn new(stream: Stream) -> Self {
        Splitter { stream, partial: Vec::new() }
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Line>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            self.emit(out);
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.emit(out);
            self.partial = rest;
        }
    }

    fn finish(&mut self, out: &mut Vec<Line>) {
        if !self.partial.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<Line>) {
        let text = String::from_utf8_lossy(&self.partial).into_owned();
        out.push(Line { stream: self.stream, text });
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(stream: Stream, input: &[&[u8]]) -> Vec<Line> {
        let (mut s, mut out) = (Splitter::new(stream), Vec::new());
        for piece in input {
            s.push(piece, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn lines_survive_any_chunking() {
        let bytes = b"abc\nde\n\nf";
        let want = ["abc", "de", "", "f"];
        for split in 0..bytes.len() {
            let got = lines(Stream::Stderr, &[&bytes[..split], &bytes[split..]]);
            let texts: Vec<_> = got.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(texts, want);
            assert!(got.iter().all(|l| l.stream == Stream::Stderr));
        }
    }

    #[test]
    fn a_long_line_arrives_in_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let got = lines(Stream::Stdout, &[&long]);
        assert_eq!(got.iter().map(|l| l.text.len()).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 3]);
    }
}
