//! Start a chain of contexts, each via the one before, and time a call to the last.
//!
//! ```text
//! cargo run --example chain -- [ssh options] [--sudo-password-env VAR] [--su-password-env VAR] \
//!     HOP... [--jump [user@]host[:port]]...
//! ```
//! Each HOP is `ssh:[user@]host[:port]`, `sudo:user`, `su:user` or `local`. `--jump` (repeatable)
//! puts an SSH server that runs no agent in front of the next ssh hop. The ssh options of the
//! `remote` example apply to every ssh hop. Prints one line per hop and the round trip to the last;
//! on failure, the error naming the hop, and exit status 1.

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use common::{say, start, SshOptions, SSH_USAGE};
use hypha::{Context, Handlers, Local, Ping, Runtime, Su, Sudo, Whoami};

async fn run() -> anyhow::Result<()> {
    let mut opts = SshOptions::default();
    let (mut sudo_password, mut su_password) = (None, None);
    let mut hops: Vec<(String, Vec<String>)> = Vec::new();
    let mut jump = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if opts.take(&arg, &mut args)? {
            continue;
        }
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--jump" => jump.push(value()?),
            "--sudo-password-env" => sudo_password = Some(env(&value()?)?),
            "--su-password-env" => su_password = Some(env(&value()?)?),
            "-h" | "--help" => bail!(
                "usage: chain {SSH_USAGE} [--sudo-password-env VAR] [--su-password-env VAR] HOP... [--jump HOST]...\n\
                 HOP: ssh:[user@]host[:port] | sudo:user | su:user | local"
            ),
            other if other.starts_with("--") => bail!("unknown option {other}"),
            hop => hops.push((hop.to_owned(), std::mem::take(&mut jump))),
        }
    }
    if hops.is_empty() {
        bail!("no hops (see --help)");
    }

    let rt = Runtime::with_options(Handlers::new(), opts.runtime())?;
    let mut parent: Option<Context> = None;
    for (i, (hop, jump)) in hops.iter().enumerate() {
        let n = i + 1;
        let started = Instant::now();
        let via = parent.as_ref();
        let ctx = match hop.split_once(':') {
            Some(("ssh", destination)) => opts.method(destination, jump)?.start(&rt, via).await,
            Some(("sudo", user)) => match &sudo_password {
                Some(password) => start(&rt, Sudo::new(user).with_password(password.clone()), via).await,
                None => start(&rt, Sudo::new(user), via).await,
            },
            Some(("su", user)) => {
                let password = su_password.clone().ok_or_else(|| anyhow!("hop {n} ({hop}) needs --su-password-env"))?;
                start(&rt, Su::new(user).with_password(password), via).await
            }
            None if hop == "local" => start(&rt, Local::default(), via).await,
            _ => bail!("hop {n}: {hop:?} is not ssh:..., sudo:..., su:... or local"),
        }
        .map_err(|e| anyhow!("hop {n} ({hop}): {e}"))?;
        let took = started.elapsed();
        let who = ctx.call(Whoami).await.map_err(|e| anyhow!("hop {n} ({hop}): {e}"))?;
        let cached = if ctx.uploaded().is_some() { "uploaded" } else { "cached" };
        say!(
            "hop {n}: {hop:<28} user {:<12} host {:<16} pid {:<7} ({took:.0?}, agent {cached})",
            who.user,
            who.host,
            who.pid
        );
        parent = Some(ctx);
    }
    let last = parent.context("no hops")?;
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        last.call(Ping).await.map_err(|e| anyhow!("round trip to the last hop: {e}"))?;
        times.push(t.elapsed());
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    say!("round trip to hop {}: {median:.0?} (median of {})", hops.len(), times.len());
    rt.shutdown().await;
    Ok(())
}

fn env(var: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| format!("${var} is not set"))
}

#[tokio::main]
async fn main() -> ExitCode {
    hypha::run_if_agent(&Handlers::new());
    hypha::bootstrap::init_logging();
    common::exit_code(run().await)
}
