//! The block of context ids this context may give to the children it starts by itself.

use super::Router;
use crate::proto::IdBlock;
use crate::ContextId;

impl Router {
    /// The ids this context may give to the children it starts by itself (from its Init).
    pub fn grant_ids(&self, block: IdBlock) {
        *self.inner.ids.lock().unwrap_or_else(|e| e.into_inner()) = block;
    }

    /// Take `n` ids from this context's block, if it has that many left.
    pub fn allocate_ids(&self, n: ContextId) -> Option<IdBlock> {
        let mut ids = self.inner.ids.lock().unwrap_or_else(|e| e.into_inner());
        let (start, end) = *ids;
        if end.saturating_sub(start) < n {
            return None;
        }
        ids.0 = start + n;
        Some((start, start + n))
    }
}
