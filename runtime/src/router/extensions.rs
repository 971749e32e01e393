//! Typed values the layers above keep with a router (one per type), such as the actors crate's
//! per-router supervisor that a handler finds from its `Cx`.

use std::any::{Any, TypeId};
use std::collections::HashMap;

use super::Router;

/// What [`Router::extension`] keeps: one value per type.
pub(super) type Extensions = HashMap<TypeId, Box<dyn Any + Send + Sync>>;

impl Router {
    /// A value of type `T` kept with this router for the layers above it (one per type), made by
    /// `init` the first time it is asked for. Not public API.
    ///
    /// `init` runs with no lock held, so it may use the router, even ask for other extensions.
    /// Callers that race on a first use may each run `init`: the first value stored wins, and every
    /// caller gets a clone of it.
    ///
    /// The value lives as long as the router. A `T` that holds a [`Router`] (or anything holding
    /// one) would keep its own router alive through it, a cycle that is never freed: store a
    /// `Weak` or plain data instead.
    #[doc(hidden)]
    pub fn extension<T: Clone + Send + Sync + 'static>(&self, init: impl FnOnce() -> T) -> T {
        let key = TypeId::of::<T>();
        let lock = || self.inner.extensions.lock().unwrap_or_else(|e| e.into_inner());
        let found = lock().get(&key).and_then(|v| v.downcast_ref::<T>()).cloned();
        if let Some(found) = found {
            return found;
        }
        let made = init();
        let mut map = lock();
        if let Some(first) = map.get(&key).and_then(|v| v.downcast_ref::<T>()) {
            // Someone stored one while `init` ran. `made` is dropped after the lock is released.
            return first.clone();
        }
        map.insert(key, Box::new(made.clone()));
        made
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::{Handlers, Router, RouterConfig};

    fn router(id: u32) -> Router {
        Router::new(RouterConfig::new(id, vec![], "test"), Handlers::new())
    }

    #[derive(Clone, Debug)]
    struct Slot(Arc<AtomicUsize>);

    #[derive(Clone, Debug, PartialEq)]
    struct Name(&'static str);

    #[test]
    fn an_extension_is_made_once_per_type_and_router() {
        let (r, other) = (router(0), router(1));
        let made = AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, Ordering::Relaxed);
            Slot(Arc::new(AtomicUsize::new(0)))
        };
        let first = r.extension(make);
        first.0.fetch_add(7, Ordering::Relaxed);
        let again = r.clone().extension::<Slot>(|| unreachable!("made already"));
        assert!(Arc::ptr_eq(&first.0, &again.0), "every clone of the router sees the same value");
        assert_eq!(again.0.load(Ordering::Relaxed), 7);
        assert_eq!(r.extension(|| Name("a")), Name("a"), "another type has a slot of its own");
        assert_eq!(r.extension(|| Name("b")), Name("a"));
        let theirs = other.extension(make);
        assert!(!Arc::ptr_eq(&first.0, &theirs.0), "another router has its own");
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn init_runs_with_no_lock_held_and_the_first_value_stored_wins() {
        let r = router(0);
        let outer = r.extension(|| {
            // Uses the router, even the same slot: the value stored first is the one kept.
            assert_eq!(r.extension(|| Name("inner")), Name("inner"));
            Name("outer")
        });
        assert_eq!(outer, Name("inner"));
        assert_eq!(r.extension(|| Name("later")), Name("inner"));
    }
}
