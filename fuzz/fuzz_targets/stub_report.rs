//! The parent's side of the bootstrap stub, fed arbitrary remote output.
//!
//! Input: a selector byte (whether the remote closes after its bytes or stays silent, how many
//! bytes count as already read), then the remote's output: login noise, a report line or garbage.
//! `stub::run` must refuse it or accept it without panicking; a refusal writes nothing, an
//! acceptance writes nothing (cached) or one `SEND` header and the payload, and a remote that closed
//! is never waited for until the deadline. Every line of the output also goes through the pure
//! parsers (`Report::parse`, `Installed::parse`), which must not panic either.

#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hypha_bootstrap::builds::Builds;
use hypha_bootstrap::stub::{self, Payload};
use hypha_bootstrap::BootError;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;

const NONCE: &str = "fuzz0123";
const TIMEOUT: Duration = Duration::from_secs(30);

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a tokio runtime")
    })
}

/// A remote that has said all it will and keeps the channel open.
struct Silent;

impl AsyncRead for Silent {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// Takes everything at once and counts it.
#[derive(Default)]
struct Counting(usize);

impl AsyncWrite for Counting {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0 += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Bytes the parent writes to upload a body of `n` bytes: the `SEND` header and the body.
fn sent(n: u64) -> u64 {
    format!("SEND {n}\n").len() as u64 + n
}

/// Whether `n` is the size of one of this executable's payloads (gzip or raw).
async fn uploads(n: u64) -> bool {
    let p = Payload::current().await.expect("this executable is readable");
    n == p.gzip.len() as u64 || n == p.raw.len() as u64
}

fuzz_target!(|data: &[u8]| {
    let [select, remote @ ..] = data else {
        return;
    };
    let closes = select & 1 == 0;
    let ahead = remote.len() * usize::from((select >> 1) & 7) / 8;
    let (ahead, rest) = remote.split_at(ahead);
    for line in String::from_utf8_lossy(remote).lines() {
        let _ = stub::Report::parse(line);
        let _ = stub::Installed::parse(line, NONCE);
    }
    runtime().block_on(async {
        let builds = Builds::current().await.expect("this executable is readable");
        let mut out = Counting::default();
        let result = if closes {
            stub::run(&mut { rest }, &mut out, BytesMut::from(ahead), NONCE, &builds, "fuzz", TIMEOUT).await
        } else {
            let mut reader = rest.chain(Silent);
            stub::run(&mut reader, &mut out, BytesMut::from(ahead), NONCE, &builds, "fuzz", TIMEOUT).await
        };
        match result {
            Ok((outcome, left)) => {
                assert!(left.len() <= remote.len(), "more bytes left over than were sent");
                match outcome.uploaded {
                    None => assert_eq!(out.0, 0, "a cached agent is answered with nothing"),
                    Some(n) => {
                        assert!(uploads(n).await, "uploaded {n} bytes");
                        assert_eq!(out.0 as u64, sent(n), "the reply is one header and the payload");
                    }
                }
            }
            Err(e) => {
                // Refused at the report: nothing was written. After an upload (the stub then failed
                // to install it, or went away): exactly one header and the payload.
                let upload = out.0 as u64 > 0 && {
                    let p = Payload::current().await.expect("this executable is readable");
                    [p.gzip.len(), p.raw.len()].iter().any(|&n| out.0 as u64 == sent(n as u64))
                };
                assert!(out.0 == 0 || upload, "a refused stub was answered with {} bytes: {e}", out.0);
                if closes {
                    assert!(!matches!(e, BootError::Timeout { .. }), "waited for a remote that had closed: {e}");
                }
            }
        }
    });
});
