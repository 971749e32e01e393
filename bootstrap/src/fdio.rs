//! Non-blocking async reads and writes on a raw file descriptor (the agent's stdio).
//!
//! The agent's channel to its parent is whatever its stdin and stdout are: pipes for local
//! contexts, a socket or pipe from sshd, a pty after `su`. `AsyncFd` with plain `read(2)` and
//! `write(2)` works on all of them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One direction of a file descriptor as a tokio stream.
#[derive(Debug)]
pub struct FdStream(AsyncFd<OwnedFd>);

impl FdStream {
    /// Wrap `fd`, switching it to non-blocking mode. Must be called within a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: an OwnedFd stays open and names the same file for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(FdStream(fd))
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for FdStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // SAFETY: reading into an initialised buffer of the given length.
            let res = guard.try_io(|fd| {
                check(unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) })
            });
            match res {
                Ok(Ok(n)) => {
                    // A short read emptied the descriptor: skip the read that would say EAGAIN.
                    if n > 0 && n < unfilled.len() {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            // SAFETY: writing from a valid buffer of the given length.
            match guard.try_io(|fd| check(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Ok(n)) => {
                    if n < data.len() {
                        guard.clear_ready(); // the pipe is full
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(res) => return Poll::Ready(res),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing happens when the descriptor is dropped; for a pipe that is the end of file.
        Poll::Ready(Ok(()))
    }
}

/// Move the process's stdin and stdout to private descriptors for the protocol, and point fd 0 at
/// `/dev/null` and fd 1 at stderr, so a stray `println!` in a handler cannot corrupt the stream.
/// Where stderr is the protocol's own file too (a terminal, under su), it goes to `/dev/null`, or a
/// panic message would land in the middle of a frame.
pub fn take_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain descriptor juggling at start-up; every result is checked.
    unsafe {
        let input = check(libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) as isize)? as RawFd;
        let output = check(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) as isize)? as RawFd;
        let null = check(libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) as isize)? as RawFd;
        check(libc::dup2(null, 0) as isize)?;
        if same_file(1, 2) {
            check(libc::dup2(null, 2) as isize)?;
        }
        libc::close(null);
        check(libc::dup2(2, 1) as isize)?;
        Ok((OwnedFd::from_raw_fd(input), OwnedFd::from_raw_fd(output)))
    }
}

/// The agent's stderr as it was before [`capture_stderr`] (`-1`: not captured), for the last words
/// of an agent that fails ([`restore_stderr`]) and for `HYPHA_LOG`'s own log lines.
static ORIGINAL_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Point fd 2 (and fd 1, which [`take_stdio`] made its copy) at a new pipe, whose read end is
/// returned, and keep the original stderr aside (returned as a copy too). Whatever this process
/// writes to stderr from then on (a panic message, a library's complaint, a stray `println!`),
/// and whatever a command it starts writes to the stderr it inherits, comes out of the pipe,
/// for the agent to send up the tree as log records. Call it after [`take_stdio`].
pub fn capture_stderr() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: descriptor juggling at start-up, as in take_stdio; every result is checked, and
    // nothing is closed that another owner holds.
    unsafe {
        let original = check(libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) as isize)? as RawFd;
        let original = OwnedFd::from_raw_fd(original);
        let mut ends = [0 as RawFd; 2];
        check(libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) as isize)?;
        let (read, write) = (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1]));
        // dup2 clears close-on-exec on 1 and 2: children inherit the pipe as their stderr.
        check(libc::dup2(write.as_raw_fd(), 2) as isize)?;
        check(libc::dup2(write.as_raw_fd(), 1) as isize)?;
        drop(write);
        let kept = check(libc::fcntl(original.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) as isize)? as RawFd;
        ORIGINAL_STDERR.store(kept, std::sync::atomic::Ordering::Release);
        Ok((read, original))
    }
}

/// Point fd 1 and 2 back at the stderr [`capture_stderr`] found (if it ran): for an agent's last
/// words before it exits, which no log record would carry any more.
pub fn restore_stderr() {
    let original = ORIGINAL_STDERR.load(std::sync::atomic::Ordering::Acquire);
    if original >= 0 {
        // SAFETY: dup2 onto the standard descriptors from one this module keeps open for good.
        unsafe {
            libc::dup2(original, 2);
            libc::dup2(original, 1);
        }
    }
}

fn same_file(a: RawFd, b: RawFd) -> bool {
    let mut sa = std::mem::MaybeUninit::<libc::stat>::uninit();
    let mut sb = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the structs on success; they are read only then.
    unsafe {
        if libc::fstat(a, sa.as_mut_ptr()) != 0 || libc::fstat(b, sb.as_mut_ptr()) != 0 {
            return false;
        }
        let (sa, sb) = (sa.assume_init(), sb.assume_init());
        sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino && sa.st_rdev == sb.st_rdev
    }
}
