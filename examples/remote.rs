//! Start a context on another host over SSH, print its Hello and the answer of one typed call.
//!
//! ```text
//! cargo run --example remote -- [--method ssh|openssh] [--port N] [--identity FILE]
//!     [--password-env VAR] [--known-hosts FILE | --accept-new | --ignore-host-key]
//!     [--agent ARCH=PATH]... [user@]host
//! ```
//! `ssh` (the default) runs SSH in process; `openssh` runs the system `ssh` client, so
//! `~/.ssh/config` applies. `--agent aarch64=PATH` serves the build of this example at PATH to an
//! aarch64 host (`scripts/build-agents.sh` makes them). On failure it prints the error and exits with status 1.

mod common;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use common::{say, SshOptions, SSH_USAGE};
use hypha::{Handlers, Runtime, Whoami};

async fn run() -> anyhow::Result<()> {
    let mut opts = SshOptions::default();
    let mut destination = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if opts.take(&arg, &mut args)? {
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => bail!("usage: remote {SSH_USAGE} [user@]host"),
            other if other.starts_with("--") => bail!("unknown option {other}"),
            other => destination = Some(other.to_owned()),
        }
    }
    let Some(destination) = destination else { bail!("which host? (see --help)") };
    let method = opts.method(&destination, &[])?;

    let rt = Runtime::with_options(Handlers::new(), opts.runtime())?;
    let started = Instant::now();
    let ctx = method.start(&rt, None).await?;
    let took = started.elapsed();
    let hello = ctx.hello();
    say!("context {} ({})", ctx.id(), ctx.name());
    say!("  user {}  host {}  arch {}  pid {}", hello.user, hello.host, hello.arch, hello.pid);
    say!("  agent {}", hello.binary_hash);
    match ctx.uploaded() {
        Some(bytes) => say!("  started in {took:.2?}: agent uploaded ({bytes} bytes compressed)"),
        None => say!("  started in {took:.2?}: agent found cached on the host"),
    }
    let t = Instant::now();
    let who = ctx.call(Whoami).await?;
    say!("  Whoami answered in {:.2?}: pid {} on {} as {}", t.elapsed(), who.pid, who.host, who.user);
    ctx.shutdown().await;
    rt.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    hypha::run_if_agent(&Handlers::new());
    hypha::bootstrap::init_logging(); // HYPHA_LOG=debug shows the SSH session's details
    common::exit_code(run().await)
}
