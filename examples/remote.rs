//! Start a context on another host over SSH, print its Hello and the answer of one typed call.
//!
//! ```text
//! cargo run --example remote -- [--method ssh|openssh] [--port N] [--identity FILE]
//!     [--password-env VAR] [--known-hosts FILE | --accept-new | --ignore-host-key] [user@]host
//! ```
//! `ssh` (the default) runs SSH in process; `openssh` runs the system `ssh` client, so
//! `~/.ssh/config` applies. On failure it prints the error and exits with status 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use hypha::{Auth, Handlers, HostKeyPolicy, Method, OpenSsh, Runtime, Ssh, Whoami};

#[derive(Debug, Default)]
struct Args {
    method: String,
    port: Option<u16>,
    identity: Option<PathBuf>,
    password_env: Option<String>,
    known_hosts: Option<PathBuf>,
    policy: Option<HostKeyPolicy>,
    destination: String,
}

fn parse() -> anyhow::Result<Args> {
    let mut args = Args { method: "ssh".into(), ..Args::default() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--method" => args.method = value()?,
            "--port" => args.port = Some(value()?.parse().context("--port")?),
            "--identity" => args.identity = Some(value()?.into()),
            "--password-env" => args.password_env = Some(value()?),
            "--known-hosts" => args.known_hosts = Some(value()?.into()),
            "--accept-new" => args.policy = Some(HostKeyPolicy::AcceptNew),
            "--ignore-host-key" => args.policy = Some(HostKeyPolicy::Ignore),
            "-h" | "--help" => bail!("usage: remote [--method ssh|openssh] [--port N] [--identity FILE] [--password-env VAR] [--known-hosts FILE | --accept-new | --ignore-host-key] [user@]host"),
            other if other.starts_with("--") => bail!("unknown option {other}"),
            other => args.destination = other.to_owned(),
        }
    }
    if args.destination.is_empty() {
        bail!("which host? (see --help)");
    }
    Ok(args)
}

fn method(args: &Args) -> anyhow::Result<Box<dyn Method>> {
    match args.method.as_str() {
        "openssh" => {
            let mut m = OpenSsh::new(args.destination.clone());
            m.port = args.port;
            m.identity = args.identity.clone();
            m.known_hosts = args.known_hosts.clone();
            m.host_key = args.policy.clone().or(args.known_hosts.as_ref().map(|_| HostKeyPolicy::Enforce));
            if args.password_env.is_some() {
                bail!("--password-env needs --method ssh: the openssh method runs ssh in BatchMode");
            }
            Ok(Box::new(m))
        }
        "ssh" => {
            let (user, host) = match args.destination.split_once('@') {
                Some((user, host)) => (user.to_owned(), host.to_owned()),
                None => (std::env::var("USER").unwrap_or_else(|_| "root".into()), args.destination.clone()),
            };
            let mut m = Ssh::new(user, host);
            if let Some(port) = args.port {
                m.port = port;
            }
            if let Some(path) = &args.identity {
                m.auth = vec![Auth::Key { path: path.clone(), passphrase: None }];
            }
            if let Some(var) = &args.password_env {
                let password = std::env::var(var).with_context(|| format!("${var} is not set"))?;
                m.auth.push(Auth::Password(password));
            }
            m.known_hosts = args.known_hosts.clone();
            if let Some(policy) = &args.policy {
                m.host_key = policy.clone();
            }
            Ok(Box::new(m))
        }
        other => bail!("unknown method {other} (ssh or openssh)"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let rt = Runtime::start(Handlers::new())?;
    let started = Instant::now();
    let ctx = rt.spawn(method(&args)?).await?;
    let took = started.elapsed();
    let hello = ctx.hello();
    println!("context {} ({})", ctx.id(), ctx.name());
    println!("  user {}  host {}  arch {}  pid {}", hello.user, hello.host, hello.arch, hello.pid);
    println!("  agent {}", hello.binary_hash);
    match ctx.uploaded() {
        Some(bytes) => println!("  started in {took:.2?}: agent uploaded ({bytes} bytes compressed)"),
        None => println!("  started in {took:.2?}: agent found cached on the host"),
    }
    let t = Instant::now();
    let who = ctx.call(Whoami).await?;
    println!("  Whoami answered in {:.2?}: pid {} on {} as {}", t.elapsed(), who.pid, who.host, who.user);
    ctx.shutdown().await;
    rt.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    hypha::run_if_agent(&Handlers::new());
    hypha::bootstrap::init_logging(); // HYPHA_LOG=debug shows the SSH session's details
    let result = match parse() {
        Ok(args) => run(args).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
