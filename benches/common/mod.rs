//! Shared by the bench binaries: the handlers their agents serve and the controller's runtime.

#![allow(dead_code)]

use hypha::{ByteReceiver, Cx, HandlerError, Handlers, Request};
use serde::{Deserialize, Serialize};

/// Upload handler that discards what it gets and says how much it got.
#[derive(Serialize, Deserialize)]
pub(crate) struct Sink;
impl Request for Sink {
    type Response = u64;
    const NAME: &'static str = "bench.sink";
}

/// The handlers of the bench agents.
pub(crate) fn handlers() -> Handlers {
    Handlers::new()
        .on_upload(|Sink, _: Cx, mut rx: ByteReceiver| async move { rx.drain().await.map_err(HandlerError::from) })
}

/// The controller's runtime: multi-threaded like `#[tokio::main]`, or single-threaded with
/// `HYPHA_BENCH_CURRENT_THREAD=1`.
pub(crate) fn tokio_rt() -> tokio::runtime::Runtime {
    if std::env::var("HYPHA_BENCH_CURRENT_THREAD").is_ok_and(|v| v == "1") {
        return tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio")
}
