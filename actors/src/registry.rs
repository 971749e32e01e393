//! The runtime's list of live contexts, for shutting them all down, and who started whom.
use std::collections::HashMap;
use std::sync::Mutex;

use actix::Addr;
use hypha_runtime::ContextId;

use crate::actor::Lifecycle;

#[derive(Default)]
pub(crate) struct Registry(Mutex<Contexts>);

#[derive(Default)]
struct Contexts {
    actors: HashMap<ContextId, Addr<Lifecycle>>,
    /// The parent of each context started via another.
    parents: HashMap<ContextId, ContextId>,
}

impl Registry {
    /// `parent`: the context it was started via, if any.
    pub(crate) fn insert(&self, id: ContextId, addr: Addr<Lifecycle>, parent: Option<ContextId>) {
        let mut c = self.lock();
        c.actors.insert(id, addr);
        if let Some(parent) = parent {
            c.parents.insert(id, parent);
        }
    }
    pub(crate) fn remove(&self, id: ContextId) {
        let mut c = self.lock();
        c.actors.remove(&id);
        c.parents.remove(&id);
    }
    pub(crate) fn drain(&self) -> Vec<Addr<Lifecycle>> {
        let mut c = self.lock();
        c.parents.clear();
        c.actors.drain().map(|(_, a)| a).collect()
    }
    /// The contexts between the controller and `id`, nearest to `id` first.
    pub(crate) fn above(&self, id: ContextId) -> Vec<ContextId> {
        let c = self.lock();
        let mut hops = Vec::new();
        let mut at = id;
        while let Some(&up) = c.parents.get(&at) {
            hops.push(up);
            at = up;
        }
        hops
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Contexts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
