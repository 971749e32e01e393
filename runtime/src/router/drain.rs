//! In-flight accounting of the calls this context serves, draining them, and asking a descendant to
//! shut down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Router;
use crate::error::CallError;
use crate::proto::Control;
use crate::ContextId;

impl Router {
    /// Whether new calls are taken: until [`Router::drain`].
    pub(super) fn accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    /// A call starts running here; [`Router::drain`] waits for it to finish.
    pub(super) fn call_started(&self) {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A call that ran here is over (answered, or its failure logged).
    pub(super) fn call_finished(&self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    /// Refuse new calls and wait up to `grace` for calls in flight to finish. True if they did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.accepting.store(false, Ordering::Release);
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }

    /// Ask context `dst` (a descendant) to stop taking calls, let calls in flight finish for up to
    /// `grace`, and exit. Only its ancestors are obeyed.
    pub async fn request_shutdown(&self, dst: ContextId, grace: Duration) -> Result<(), CallError> {
        let msg = Control::Shutdown { grace_ms: grace.as_millis().try_into().unwrap_or(u64::MAX) };
        let frame = self.control_frame(dst, &msg)?;
        self.send_frame(frame).await
    }
}
