//! Handlers every context serves.

use hypha_runtime::{HandlerError, Handlers, Request};
use serde::{Deserialize, Serialize};

use crate::Identity;

/// Ask a context who and where it is.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Whoami;

impl Request for Whoami {
    type Response = Identity;
    const NAME: &'static str = "hypha.whoami";
}

/// `handlers` plus the built-in ones.
pub fn install(handlers: Handlers) -> Handlers {
    handlers
        .on(|_: Whoami, _| async { Ok::<_, HandlerError>(Identity::current().clone()) })
        .on(crate::via::spawn)
        .on(crate::forward::serve)
        .on_download(crate::builds::serve)
}
