//! Readiness for libssh2 under tokio: [`SshStream`] implements async-ssh2-lite's
//! `AsyncSessionStream` itself.
//!
//! The stock tokio glue polls every millisecond, never clears readiness, and asserts on block
//! directions. After libssh2 says "would block", this one waits for the socket direction libssh2
//! is blocked on and retries inside `try_io`, so a retry that would block again clears exactly
//! the readiness it saw (no busy loop, no lost wake-up). A fallback timer covers libssh2 blocking
//! without saying in which direction.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_ssh2_lite::ssh2::{self, BlockDirections};
use async_ssh2_lite::AsyncSessionStream;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// How long to wait for readiness before retrying anyway (libssh2 sometimes blocks without saying
/// in which direction).
const FALLBACK: Duration = Duration::from_millis(100);

/// The libssh2 session under an `AsyncSession`, which async-ssh2-lite does not hand out: its
/// stream sees it with every operation and keeps a handle here (for ssh-agent authentication,
/// which needs the session itself).
pub(super) type RawSession = Arc<OnceLock<ssh2::Session>>;

/// The socket under a libssh2 session, waiting for libssh2 the way tokio's readiness model needs.
pub struct SshStream {
    io: Io,
    raw: RawSession,
}

impl fmt::Debug for SshStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshStream").field("io", &self.io).finish_non_exhaustive()
    }
}

/// The socket a session runs over.
#[derive(Debug)]
pub(super) enum Io {
    /// A direct connection.
    Tcp(TcpStream),
    /// One end of a socketpair whose other end a jump host's tunnel feeds.
    Unix(UnixStream),
}

impl AsRawFd for SshStream {
    fn as_raw_fd(&self) -> RawFd {
        match &self.io {
            Io::Tcp(s) => s.as_raw_fd(),
            Io::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl SshStream {
    /// A stream over `io`, keeping a handle on its libssh2 session in `raw` once it sees it.
    pub(super) fn new(io: Io, raw: RawSession) -> SshStream {
        SshStream { io, raw }
    }

    async fn ready(&self, interest: Interest) -> io::Result<tokio::io::Ready> {
        match &self.io {
            Io::Tcp(s) => s.ready(interest).await,
            Io::Unix(s) => s.ready(interest).await,
        }
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match &self.io {
            Io::Tcp(s) => s.try_io(interest, f),
            Io::Unix(s) => s.try_io(interest, f),
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io {
            Io::Tcp(s) => s.poll_read_ready(cx),
            Io::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io {
            Io::Tcp(s) => s.poll_write_ready(cx),
            Io::Unix(s) => s.poll_write_ready(cx),
        }
    }
}

fn interest(directions: BlockDirections) -> Interest {
    match directions {
        BlockDirections::Inbound => Interest::READABLE,
        BlockDirections::Outbound => Interest::WRITABLE,
        _ => Interest::READABLE | Interest::WRITABLE,
    }
}

fn would_block(e: &ssh2::Error) -> bool {
    io::Error::from(ssh2::Error::from_errno(e.code())).kind() == io::ErrorKind::WouldBlock
}

#[async_trait::async_trait]
impl AsyncSessionStream for SshStream {
    async fn x_with<R>(
        &self,
        mut op: impl FnMut() -> Result<R, ssh2::Error> + Send,
        sess: &ssh2::Session,
        _expected: BlockDirections,
        _sleep: Option<Duration>,
    ) -> Result<R, async_ssh2_lite::Error> {
        self.raw.get_or_init(|| sess.clone());
        // libssh2 may have what it needs buffered already: try before waiting.
        match op() {
            Err(e) if would_block(&e) => {}
            done => return done.map_err(Into::into),
        }
        loop {
            let interest = interest(sess.block_directions());
            if tokio::time::timeout(FALLBACK, self.ready(interest)).await.is_err() {
                match op() {
                    Err(e) if would_block(&e) => continue,
                    done => return done.map_err(Into::into),
                }
            }
            let attempt = self.try_io(interest, || op().map_err(io::Error::from));
            match attempt {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
                Ok(r) => return Ok(r),
            }
        }
    }

    fn poll_x_with<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> Result<R, io::Error> + Send,
        sess: &ssh2::Session,
        _expected: BlockDirections,
        _sleep: Option<Duration>,
    ) -> Poll<Result<R, io::Error>> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
        loop {
            let interest = interest(sess.block_directions());
            let mut ready = false;
            if interest.is_readable() {
                match self.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => ready = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !ready && interest.is_writable() {
                match self.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => ready = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !ready {
                return Poll::Pending;
            }
            match self.try_io(interest, &mut op) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}
