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

/// `handlers` plus the built-in ones, and the built-in methods.
pub fn install(handlers: Handlers) -> Handlers {
    crate::via::install(handlers)
        .on(|_: Whoami, _| async { Ok::<_, HandlerError>(Identity::current().clone()) })
        .on(crate::forward::serve)
        .on(crate::log::serve)
        .on_download(crate::builds::serve)
        .on_duplex(crate::process::serve)
        .on_download(crate::files::serve_read)
        .on_upload(crate::files::serve_write)
}
