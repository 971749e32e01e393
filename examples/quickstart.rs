//! Start a few local contexts, call a typed handler on each, print where each one runs.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use hypha::{Cx, HandlerError, Handlers, Identity, Request, Runtime};
use serde::{Deserialize, Serialize};

/// Ask a context where it runs.
#[derive(Debug, Serialize, Deserialize)]
struct WhereAreYou;

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
struct Place {
    pid: u32,
    host: String,
    user: String,
}

impl Request for WhereAreYou {
    type Response = Place;
    const NAME: &'static str = "quickstart.where";
}

async fn where_are_you(_: WhereAreYou, _: Cx) -> Result<Place, HandlerError> {
    let me = Identity::current();
    Ok(Place { pid: me.pid, host: me.host.clone(), user: me.user.clone() })
}

const CONTEXTS: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let handlers = Handlers::new().on(where_are_you);
    // In a context this process started, this serves calls and never returns.
    hypha::run_if_agent(&handlers);

    let rt = Runtime::new(handlers)?;
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..CONTEXTS {
        let rt = rt.clone();
        starts.spawn(async move { rt.local().await });
    }
    let mut contexts = Vec::new();
    while let Some(started) = starts.join_next().await {
        contexts.push(started??);
    }
    contexts.sort_by_key(|c| c.id());

    for ctx in &contexts {
        let place = ctx.call(WhereAreYou).await?;
        println!("context {}: pid {} on {} (user {})", ctx.id(), place.pid, place.host, place.user);
    }
    rt.shutdown().await;
    Ok(())
}
