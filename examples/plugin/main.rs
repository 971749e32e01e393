//! A method of one's own, as a plugin: [`exec::Exec`] runs the agent through any command that
//! runs a program elsewhere (`docker exec -i`, `kubectl exec -i`, `nsenter`, `chroot`). Registered
//! by name, it starts directly or via any context, like the built-in methods.
//!
//! ```text
//! cargo run --example plugin -- [ssh options] [--via [user@]host[:port]] COMMAND...
//! cargo run --example plugin -- sudo nsenter -t 4242 -a --     # into another process's namespaces
//! cargo run --example plugin -- --via alice@web1 docker exec -i db1
//! ```
//! Prints where the agent runs.

#[path = "../common/mod.rs"]
mod common;
mod exec;

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use common::{say, SshOptions, SSH_USAGE};
use hypha::prelude::*;
use hypha::Whoami;

async fn run(handlers: Handlers) -> anyhow::Result<()> {
    let mut opts = SshOptions::default();
    let mut via = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if opts.take(&arg, &mut args)? {
            continue;
        }
        match arg.as_str() {
            "--via" => via = Some(args.next().context("--via needs a host")?),
            "-h" | "--help" => bail!("usage: plugin {SSH_USAGE} [--via [user@]host[:port]] COMMAND..."),
            _ => {
                let command: Vec<String> = std::iter::once(arg).chain(args.by_ref()).collect();
                let rt = Runtime::with_options(handlers, opts.runtime())?;
                let parent = match &via {
                    Some(host) => Some(opts.method(host, &[])?.start(&rt, None).await?),
                    None => None,
                };
                let ctx = common::start(&rt, exec::Exec::new(command), parent.as_ref()).await?;
                let who = ctx.call(Whoami).await?;
                say!("{}: pid {} as {} on {}", ctx.name(), who.pid, who.user, who.host);
                rt.shutdown().await;
                return Ok(());
            }
        }
    }
    bail!("no command (see --help)")
}

#[tokio::main]
async fn main() -> ExitCode {
    // Registered in every copy of the program, so any context can start an `Exec` child.
    let handlers = Handlers::new().method::<exec::Exec>();
    hypha::run_if_agent(&handlers);
    hypha::bootstrap::init_logging();
    common::exit_code(run(handlers).await)
}
