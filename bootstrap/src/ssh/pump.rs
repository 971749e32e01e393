//! The pump: the one task that owns a session and its channel.
//!
//! libssh2 keeps all of a session's state unsynchronised, so once a start has its channel, one
//! task owns both for the context's whole life: it moves bytes between the channel and an
//! in-memory duplex (or a jump host's socketpair) whose other end is the context's link, keeps
//! what the remote writes to stderr for error messages, and sends keepalives. Nothing else
//! touches the session.

use std::time::Duration;

use async_ssh2_lite::{AsyncChannel, AsyncSession};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::stream::SshStream;
use super::PACKET;
use crate::method::StderrTail;

/// Own the session: move bytes between the channel and the link until either side ends.
pub(super) async fn pump<L: AsyncRead + AsyncWrite>(
    session: AsyncSession<SshStream>,
    mut channel: AsyncChannel<SshStream>,
    link: L,
    tail: StderrTail,
    keepalive: Option<Duration>,
) {
    let (mut link_in, mut link_out) = tokio::io::split(link);
    let (mut from_channel, mut to_channel, mut stderr) = (channel.stream(0), channel.stream(0), channel.stderr());
    // Link → channel: `filling` takes what the link says; `out` is what libssh2 is being offered.
    // After "would block" libssh2 must be offered the same bytes again, so `offer` stays fixed
    // until they are accepted.
    let (mut filling, mut out) = (BytesMut::with_capacity(256 << 10), BytesMut::new());
    let mut offer = 0;
    // Channel → link.
    let (mut chunk, mut pending) = (vec![0u8; 64 << 10], BytesMut::new());
    let mut errbuf = [0u8; 4096];
    let (mut link_eof, mut eof_sent, mut stderr_open) = (false, false, true);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut idle_since = tokio::time::Instant::now();
    loop {
        if out.is_empty() {
            out = filling.split();
            offer = out.len().min(PACKET as usize);
        }
        if filling.capacity() - filling.len() < (16 << 10) {
            filling.reserve(256 << 10);
        }
        if link_eof && out.is_empty() && !eof_sent {
            let _ = channel.send_eof().await;
            eof_sent = true;
        }
        tokio::select! {
            read = link_in.read_buf(&mut filling), if !link_eof && filling.len() < (256 << 10) => match read {
                Ok(0) | Err(_) => link_eof = true,
                Ok(_) => {}
            },
            wrote = to_channel.write(&out[..offer]), if offer > 0 => match wrote {
                Ok(n) => {
                    out.advance(n);
                    offer = out.len().min(PACKET as usize);
                    idle_since = tokio::time::Instant::now();
                }
                Err(e) => {
                    debug!(error = %e, "ssh channel write failed");
                    break;
                }
            },
            read = from_channel.read(&mut chunk), if pending.len() < (256 << 10) => match read {
                Ok(0) | Err(_) => {
                    let _ = link_out.write_all(&pending).await;
                    break;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            },
            wrote = link_out.write(&pending), if !pending.is_empty() => match wrote {
                Ok(n) => pending.advance(n),
                Err(_) => break,
            },
            read = stderr.read(&mut errbuf), if stderr_open => match read {
                Ok(0) | Err(_) => stderr_open = false,
                Ok(n) => tail.push(&errbuf[..n]),
            },
            _ = tick.tick() => {
                // Keepalives only when nothing is queued: libssh2 must not interleave them with a
                // half-sent data packet.
                if let Some(every) = keepalive {
                    if offer == 0 && filling.is_empty() && idle_since.elapsed() >= every {
                        let _ = session.keepalive_send().await;
                        idle_since = tokio::time::Instant::now();
                    }
                }
            }
        }
    }
    // What the remote said on stderr last (a loader's error, say) may still be buffered.
    if stderr_open {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(n) = stderr.read(&mut errbuf).await {
                if n == 0 {
                    break;
                }
                tail.push(&errbuf[..n]);
            }
        })
        .await;
    }
    tail.finish();
    let _ = link_out.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = channel.close().await;
        let _ = session.disconnect(None, "hypha context closed", None).await;
    })
    .await;
}
