//! What becomes of each frame a link reads: the reverse-path check, forwarding, and handing it by
//! handle to calls, control, streams or answers; a stream that breaks its credit.

use tracing::{debug, warn};

use super::links::{CloseReason, LinkId};
use super::Router;
use crate::call::Failure;
use crate::codec;
use crate::error::RemoteErrorKind;
use crate::frame::{flags, handles, Frame, Header};
use crate::stream::Violation;

impl Router {
    /// Handle one frame read from link `from`. An error closes that link.
    pub(super) async fn deliver(&self, frame: Frame, from: LinkId, wait: bool) -> Result<(), CloseReason> {
        let h = frame.header;
        // Reverse-path check: a frame must arrive on the link its source is routed through.
        if self.link_for(h.src) != Some(from) {
            warn!(
                src = h.src,
                dst = h.dst,
                link = from,
                "dropped a frame whose source is not behind the link it came on"
            );
            return Ok(());
        }
        if h.dst != self.id() {
            self.forward(frame, wait).await;
            return Ok(());
        }
        match h.handle {
            handles::CALL => self.dispatch(frame, wait).await,
            handles::CONTROL => self.control(frame, from, wait).await,
            handles::HEARTBEAT => {}
            handles::STREAM => {
                let stream = self.inner.inbound.get(&(h.src, h.reply_to)).map(|s| s.clone());
                if let Some(stream) = stream {
                    if h.flags & flags::REPLY != 0 {
                        return Ok(()); // only a callee answers, and this is the callee
                    }
                    if let Err(v) = stream.apply(frame) {
                        self.inner.inbound.remove(&(h.src, h.reply_to));
                        return self.violation(h, from, v);
                    }
                }
            }
            handle if handle >= handles::FIRST_DYNAMIC => return self.answer(frame, from),
            other => debug!(handle = other, src = h.src, "dropped a frame for an unknown handle"),
        }
        Ok(())
    }

    async fn forward(&self, frame: Frame, wait: bool) {
        let h = frame.header;
        if let Err(e) = self.queue(frame, wait).await {
            debug!(dst = h.dst, error = %e, "could not forward a frame");
            if h.handle == handles::CALL && h.flags & flags::NO_REPLY == 0 {
                let f = Failure::new(RemoteErrorKind::NoRoute, e.to_string());
                self.reply(h, "(forwarded call)", Err(f), wait).await;
            }
        }
    }

    /// Context `h.src` sent stream data past its credit. Its stream has failed; the peer is told,
    /// and if it is this link's own neighbour, the link closes (a stream of a context further away
    /// fails alone: it says nothing about the neighbour that carried it).
    pub(super) fn violation(&self, h: Header, from: LinkId, v: Violation) -> Result<(), CloseReason> {
        let why = format!("context {} sent stream data past the credit it was given ({})", h.src, v.0);
        warn!(src = h.src, "{why}");
        // The other end of the stream: the caller's reply handle, or the callee's stream handle.
        let (handle, reply_to) =
            if h.handle == handles::STREAM { (h.reply_to, 0) } else { (handles::STREAM, h.handle) };
        let header = Header { dst: h.src, src: self.id(), handle, reply_to, flags: flags::ABORT };
        let _ = self.push_frame(Frame { header, body: codec::encode_value(&why).unwrap_or_default() });
        let neighbour = self.inner.links.get(&from).map(|l| l.peer);
        match neighbour {
            Some(peer) if peer == h.src => Err(CloseReason::Protocol(why)),
            _ => Ok(()),
        }
    }
}
