//! The route table and what changes it: grants of ids, route announcements up the tree
//! (`AddRoute`/`DelRoute`), the other control messages from ancestors, and who watches a route.

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::calls::PendingTx;
use super::links::LinkId;
use super::Router;
use crate::codec;
use crate::error::CallError;
use crate::frame::{handles, Frame, Header};
use crate::proto::{Control, IdBlock};
use crate::stream::StreamError;
use crate::ContextId;

/// Ids `[start, end)` that may be announced only from below context `under`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grant {
    end: ContextId,
    under: ContextId,
}

impl Router {
    /// Let ids `ids` be announced (as new contexts) only from below context `under`: its own link
    /// if it is a child, or the link its route came up. Announcements of ids nobody granted are
    /// refused, so every context on the way up must hear of an id first: the controller grants
    /// every id it gives out, and tells the hops above a via start ([`Router::grant_at`]); a hop
    /// grants the blocks of the children it starts. Grants do not nest (blocks are disjoint), so
    /// the one that starts nearest below an id is the one that covers it, if any does.
    pub fn grant(&self, ids: IdBlock, under: ContextId) {
        if ids.0 < ids.1 {
            let mut grants = self.inner.grants.lock().unwrap_or_else(|e| e.into_inner());
            grants.insert(ids.0, Grant { end: ids.1, under });
        }
    }

    /// Tell context `hop` (a descendant) to [`grant`](Router::grant) `ids` below `under`; frames
    /// stay in order, so a start sent afterwards along the same path finds it there.
    pub async fn grant_at(&self, hop: ContextId, ids: IdBlock, under: ContextId) -> Result<(), CallError> {
        let frame = self.control_frame(hop, &Control::Grant { ids, under })?;
        self.send_frame(frame).await
    }

    fn granted(&self, id: ContextId) -> Option<ContextId> {
        let grants = self.inner.grants.lock().unwrap_or_else(|e| e.into_inner());
        let (_, g) = grants.range(..=id).next_back()?;
        (id < g.end).then_some(g.under)
    }

    pub(super) fn forget_grants(&self, gone: &[ContextId]) {
        if !gone.is_empty() {
            let mut grants = self.inner.grants.lock().unwrap_or_else(|e| e.into_inner());
            grants.retain(|_, g| !gone.contains(&g.under));
        }
    }

    /// Link that frames for `dst` leave on: its route, or else the parent.
    pub(super) fn link_for(&self, dst: ContextId) -> Option<LinkId> {
        if let Some(via) = self.inner.routes.get(&dst) {
            return Some(*via);
        }
        match self.inner.parent.load(Ordering::Acquire) {
            0 => None,
            parent => Some(parent),
        }
    }

    pub(super) fn is_ancestor(&self, id: ContextId) -> bool {
        self.inner.cfg.ancestors.contains(&id)
    }

    /// A context routed below this one (its route came up a child link).
    pub(super) fn is_descendant(&self, id: ContextId) -> bool {
        self.inner.routes.contains_key(&id)
    }

    /// Resolves (to the reason) when context `id` becomes unreachable from here: its route is
    /// deleted, or the link it was behind closes.
    pub fn watch_route(&self, id: ContextId) -> watch::Receiver<Option<String>> {
        self.inner.watchers.entry(id).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Context `id` is unreachable: fail the calls waiting on it and tell who watches it.
    fn route_lost(&self, id: ContextId, lost: ContextId, reason: &str) {
        let err = || CallError::Disconnected {
            context: id,
            name: format!("lost hop: context {lost}"),
            reason: reason.to_owned(),
        };
        let failed: Vec<u32> = self.inner.pending.iter().filter(|p| p.dst == id).map(|p| *p.key()).collect();
        for handle in failed {
            if let Some((_, p)) = self.inner.pending.remove(&handle) {
                match p.tx {
                    PendingTx::Once(tx) => drop(tx.send(Err(err()))),
                    PendingTx::Stream(s) => s.fail(StreamError::Call(err())),
                }
            }
        }
        self.inner.inbound.retain(|(src, _), s| {
            if *src == id {
                s.fail(StreamError::Call(err()));
            }
            *src != id
        });
        self.forget_grants(&[id]);
        if let Some((_, watch)) = self.inner.watchers.remove(&id) {
            let _ = watch.send(Some(reason.to_owned()));
        }
    }

    pub(super) async fn control(&self, frame: Frame, from: LinkId, wait: bool) {
        let src = frame.header.src;
        let msg = match codec::decode_value::<Control>(&frame.body) {
            Ok(msg) => msg,
            Err(e) => return warn!(src, error = %e, "dropped an undecodable control message"),
        };
        let from_parent = self.inner.parent.load(Ordering::Acquire) == from;
        match msg {
            // Routes are announced by descendants, up the tree, and apply to the link they came on.
            Control::AddRoute { id } if !from_parent => {
                match self.inner.routes.get(&id).map(|v| *v) {
                    Some(via) if via == from => return, // known already: nothing new to pass on
                    Some(_) => return warn!(src, id, "refused a route for a context already reachable another way"),
                    None => {}
                }
                if id == self.id() || self.is_ancestor(id) {
                    return warn!(src, id, "refused a route for this context or an ancestor");
                }
                // Every id that may appear below a link was granted here first (by this context when
                // it started the child, or by the controller for a start further down).
                match self.granted(id) {
                    Some(under) if self.inner.routes.get(&under).map(|v| *v) == Some(from) => {}
                    Some(under) => {
                        return warn!(src, id, under, "refused a route for an id granted elsewhere in the tree");
                    }
                    None => return warn!(src, id, "refused a route for an id nobody granted below that link"),
                }
                self.inner.routes.insert(id, from);
                self.pass_up(Control::AddRoute { id }, wait).await;
            }
            Control::DelRoute { id, lost, reason } if !from_parent => {
                if self.inner.routes.remove_if(&id, |_, via| *via == from).is_some() {
                    self.route_lost(id, lost, &reason);
                    self.pass_up(Control::DelRoute { id, lost, reason }, wait).await;
                }
            }
            Control::AddRoute { .. } | Control::DelRoute { .. } => {
                warn!(src, "dropped a route message that came down from the parent");
            }
            Control::Grant { ids, under } => {
                if !from_parent || !self.is_ancestor(src) {
                    return warn!(src, "refused a grant from a context that is not an ancestor");
                }
                self.grant(ids, under);
            }
            other => {
                if !from_parent || !self.is_ancestor(src) {
                    return warn!(src, "refused a control message from a context that is not an ancestor");
                }
                let guard = self.inner.control.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = guard.as_ref() {
                    let _ = tx.send(other);
                }
            }
        }
    }

    /// Pass a route change read from a child on to the parent, waiting for room as anything else
    /// read from a child does.
    async fn pass_up(&self, msg: Control, wait: bool) {
        if let Some(&parent) = self.inner.cfg.ancestors.first() {
            let sent = match self.control_frame(parent, &msg) {
                Ok(frame) => self.queue(frame, wait).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                debug!(error = %e, "could not tell the parent about a route change");
            }
        }
    }

    /// Tell the parent, if any, about a route change below this context. Queued at once, so it
    /// leaves before any frame this context sends or forwards afterwards.
    pub(super) fn announce(&self, msg: Control) {
        if let Some(&parent) = self.inner.cfg.ancestors.first() {
            let sent = self.control_frame(parent, &msg).and_then(|f| self.push_frame(f));
            if let Err(e) = sent {
                debug!(error = %e, "could not tell the parent about a route change");
            }
        }
    }

    pub(super) fn control_frame(&self, dst: ContextId, msg: &Control) -> Result<Frame, CallError> {
        let body =
            codec::encode_value(msg).map_err(|e| CallError::Encode { handler: "control", reason: e.to_string() })?;
        let header = Header { dst, src: self.id(), handle: handles::CONTROL, reply_to: 0, flags: 0 };
        Ok(Frame { header, body })
    }

    /// Deliver [`Control`] messages from ancestors to `tx`.
    pub fn set_control(&self, tx: mpsc::UnboundedSender<Control>) {
        *self.inner.control.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }
}
