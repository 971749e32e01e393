//! The runtime's list of live contexts, for shutting them all down.
use std::collections::HashMap;
use std::sync::Mutex;

use actix::Addr;
use hypha_runtime::ContextId;

use crate::actor::ContextActor;

#[derive(Default)]
pub(crate) struct Registry(Mutex<HashMap<ContextId, Addr<ContextActor>>>);

impl Registry {
    pub(crate) fn insert(&self, id: ContextId, addr: Addr<ContextActor>) {
        self.lock().insert(id, addr);
    }
    pub(crate) fn remove(&self, id: ContextId) {
        self.lock().remove(&id);
    }
    pub(crate) fn drain(&self) -> Vec<Addr<ContextActor>> {
        self.lock().drain().map(|(_, a)| a).collect()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContextId, Addr<ContextActor>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
