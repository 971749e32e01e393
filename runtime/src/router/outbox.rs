//! One link's plumbing: its outgoing queue and writer, and the watchdog that sends heartbeats and
//! notices a peer that has gone silent or stopped reading.
//!
//! Nothing here waits on another link. A link's queue is pushed to without waiting ([`Outbox::push`]);
//! senders that may be slowed down (this context's own calls and streams, and frames a child sends
//! onwards) first wait for room ([`Outbox::room`]), which comes when this link's writer makes
//! progress or the link closes. A link whose writer makes no progress for the link timeout, or
//! whose queue passes a hard limit, is closed alone.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use crate::frame::{self, Frame};
use crate::stream::CHUNK;

/// Bodies at least this large are written straight from their buffer instead of copied into the
/// writer's batch.
const WRITE_DIRECT: usize = 16 << 10;
/// The writer stops batching more frames once this much is buffered.
const WRITE_BATCH: usize = 64 << 10;
/// Senders that may wait do so while a link has more than this queued.
pub(super) const QUEUE_SOFT: usize = 8 << 20;
/// A link with more than this (plus one largest frame) queued is closed: its peer does not keep up.
pub(super) const QUEUE_HARD: usize = 64 << 20;
/// The watchdog looks this many times per link timeout; a link is silent (or stalled) after
/// `CHECKS - 1` looks in a row without a byte read (or written).
const CHECKS: u32 = 4;

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PushError {
    /// The link has closed.
    Closed,
    /// The queue passed its hard limit; the link must close.
    Overflow(usize),
}

/// The sending side of one link's queue (cheap to clone): frames go to its writer, and the
/// counters its watchdog reads. The writer ends once every clone is gone, which is when the
/// link closes (the router's entry, the watchdog and any sender in flight let theirs go).
#[derive(Clone, Debug)]
pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Frame>,
    state: Arc<LinkState>,
}

/// What a link's writer, its watchdog and its senders share.
#[derive(Debug)]
pub(super) struct LinkState {
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    hard: usize,
    room: Notify,
    closed: AtomicBool,
    /// Successful writes so far: progress, for the watchdog.
    writes: AtomicU64,
    /// Successful reads so far: signs of life from the peer, for the watchdog.
    reads: AtomicU64,
}

impl Outbox {
    pub(super) fn new(max_frame: usize) -> (Outbox, mpsc::UnboundedReceiver<Frame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = LinkState {
            queued: AtomicUsize::new(0),
            hard: QUEUE_HARD + max_frame,
            room: Notify::new(),
            closed: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        };
        (Outbox { tx, state: Arc::new(state) }, rx)
    }

    /// What the writer needs of it.
    pub(super) fn state(&self) -> Arc<LinkState> {
        self.state.clone()
    }

    /// Queue `frame` without waiting.
    pub(super) fn push(&self, frame: Frame) -> Result<(), PushError> {
        let st = &self.state;
        if st.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        let n = frame.wire_len();
        let queued = st.queued.fetch_add(n, Ordering::AcqRel) + n;
        if self.tx.send(frame).is_err() {
            st.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(PushError::Closed);
        }
        if queued > st.hard {
            return Err(PushError::Overflow(queued));
        }
        Ok(())
    }

    /// Wait until the queue is below its soft limit, or the link has closed.
    pub(super) async fn room(&self) {
        let st = &self.state;
        let roomy = || st.closed.load(Ordering::Acquire) || st.queued.load(Ordering::Acquire) <= QUEUE_SOFT;
        if roomy() {
            return; // the usual case, without touching the notifier
        }
        loop {
            let room = st.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if roomy() {
                return;
            }
            room.await;
        }
    }

    /// The link has closed: nothing more is queued, and whoever waits for room stops waiting.
    pub(super) fn close(&self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.room.notify_waiters();
    }

    pub(super) fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }
}

impl LinkState {
    /// The link's reader read something.
    pub(super) fn read_some(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// The writer wrote frames of `n` bytes.
    fn written(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        if before > QUEUE_SOFT && before - n <= QUEUE_SOFT {
            self.room.notify_waiters();
        }
    }
}

/// Counts the writer's progress for the watchdog.
struct Progress<W> {
    inner: W,
    state: Arc<LinkState>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Progress<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            if n > 0 {
                self.state.writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drain the queue into `w`, batching small frames into one write and writing large bodies
/// straight from their buffers. Ends when the queue's senders are gone (the link closed).
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: mpsc::UnboundedReceiver<Frame>,
    w: W,
    max: usize,
    state: Arc<LinkState>,
) -> std::io::Result<()> {
    let mut w = Progress { inner: w, state: state.clone() };
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + CHUNK);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(f) = next.take() {
            batch += f.wire_len();
            if f.body.len() >= WRITE_DIRECT {
                if frame::encode_header(&f.header, f.body.len(), max, &mut buf).is_ok() {
                    w.write_all_buf(&mut buf).await?;
                    w.write_all(&f.body).await?;
                }
            } else if let Err(e) = frame::encode(&f.header, &f.body, max, &mut buf) {
                warn!(error = %e, "dropped an oversized frame");
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            w.write_all_buf(&mut buf).await?;
        }
        w.flush().await?;
        state.written(batch);
    }
    w.shutdown().await
}

/// What the watchdog found wrong with a link.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing arrived for this long.
    Silent(Duration),
    /// The writer made no progress for this long with this many bytes queued.
    Stalled(Duration, usize),
}

/// Every quarter of `timeout`: push `heartbeat()` (so the peer hears from this side at least that
/// often), and return a verdict once the peer has sent nothing, or taken nothing, for `timeout`
/// (give or take a quarter).
pub(super) async fn watch(outbox: Outbox, timeout: Duration, heartbeat: impl Fn() -> Frame) -> Verdict {
    let tick = (timeout / CHECKS).max(Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = outbox.state();
    let (mut reads, mut writes) = (st.reads.load(Ordering::Relaxed), st.writes.load(Ordering::Relaxed));
    let (mut silent, mut stalled) = (0, 0);
    loop {
        interval.tick().await;
        let now = st.reads.load(Ordering::Relaxed);
        silent = if now == reads { silent + 1 } else { 0 };
        reads = now;
        let now = st.writes.load(Ordering::Relaxed);
        let queued = outbox.queued();
        stalled = if now == writes && queued > 0 { stalled + 1 } else { 0 };
        writes = now;
        if silent >= CHECKS - 1 {
            return Verdict::Silent(tick * silent);
        }
        if stalled >= CHECKS - 1 {
            return Verdict::Stalled(tick * stalled, queued);
        }
        if queued == 0 {
            let _ = outbox.push(heartbeat());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Header;

    fn frame(n: usize) -> Frame {
        Frame { header: Header::default(), body: bytes::Bytes::from(vec![0; n]) }
    }

    #[test]
    fn a_queue_past_its_hard_limit_says_so_and_a_closed_one_refuses() {
        let (outbox, _rx) = Outbox::new(0);
        assert_eq!(outbox.push(frame(QUEUE_HARD / 2)), Ok(()));
        assert!(matches!(outbox.push(frame(QUEUE_HARD / 2)), Err(PushError::Overflow(_))));
        outbox.close();
        assert_eq!(outbox.push(frame(1)), Err(PushError::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_named_within_the_timeout_and_idle_links_beat() {
        let (outbox, mut rx) = Outbox::new(0);
        let beats = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (state, beats) = (outbox.state(), beats.clone());
            tokio::spawn(async move {
                while let Some(f) = rx.recv().await {
                    state.writes.fetch_add(1, Ordering::Relaxed);
                    state.written(f.wire_len());
                    beats.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let started = tokio::time::Instant::now();
        let verdict = watch(outbox.clone(), Duration::from_secs(8), || frame(0)).await;
        assert_eq!(verdict, Verdict::Silent(Duration::from_secs(6)));
        assert_eq!(started.elapsed(), Duration::from_secs(6));
        assert_eq!(beats.load(Ordering::Relaxed), 2, "a heartbeat every quarter of the timeout until the verdict");
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_is_stalled() {
        let (outbox, _rx) = Outbox::new(0);
        outbox.push(frame(100)).unwrap();
        // Frames keep arriving from the peer, but nothing queued for it is ever written.
        let reads = {
            let state = outbox.state();
            tokio::spawn(async move {
                loop {
                    state.read_some();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let verdict = watch(outbox.clone(), Duration::from_secs(8), || frame(0)).await;
        assert_eq!(verdict, Verdict::Stalled(Duration::from_secs(6), 100 + frame::LEN_PREFIX + frame::HEADER_LEN));
        reads.abort();
    }
}
