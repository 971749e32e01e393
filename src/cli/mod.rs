//! The `hypha` command: `exec` and `ping` on the targets of a nodeset, with a bounded fan-out.
//!
//! Each subcommand starts a [`Fleet`] over the targets ([`targets`] picks the methods), runs its
//! job on each host as soon as that host is up (a command, or a timed call), and prints each
//! answer as it comes ([`output`]); a summary of the hosts that failed or could not be reached
//! goes to stderr, and the exit status says which of those happened. Ctrl-C drops the jobs
//! running (a dropped command is killed with its process group on its host) and shuts the fleet
//! down: exit status 130.

pub(crate) mod args;
mod output;
mod targets;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hypha::fleet::{Answer, Fleet, Outcome};
use hypha::nodeset::fold;
use hypha::process::{Command, Output};
use hypha::{Context, Handlers, Ping, Runtime, Sudo};
use tokio::task::JoinSet;

use args::{Cli, Cmd, Exec, Reach};
use output::{status, Out, Printer, Reply, Style, Trouble};
pub(crate) use targets::Usage;

/// Every command exited 0.
pub(crate) const OK: u8 = 0;
/// Some command exited non-zero, or its call failed.
pub(crate) const FAILED: u8 = 1;
/// Some host could not be reached.
pub(crate) const UNREACHABLE: u8 = 2;
/// Both.
pub(crate) const FAILED_AND_UNREACHABLE: u8 = 3;
/// The command line is wrong (as `sysexits.h`'s `EX_USAGE`).
pub(crate) const USAGE: u8 = 64;
/// Interrupted (128 + SIGINT, as a shell says).
pub(crate) const INTERRUPTED: u8 = 130;

/// How long the contexts get to shut down after Ctrl-C before the command exits anyway.
const INTERRUPTED_GRACE: Duration = Duration::from_secs(10);

/// Run the command line; the exit status.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Cmd::Exec(args) => exec(args).await,
        Cmd::Ping(args) => ping(args).await,
    }
}

async fn exec(args: Exec) -> anyhow::Result<u8> {
    let hosts = targets::methods(&args.targets, &args.reach)?;
    let style = if args.json {
        Style::Json
    } else if let Some(format) = &args.format {
        Style::format(format)?
    } else if args.gather || args.gather_all {
        Style::Gather { stderr: args.gather_all }
    } else {
        Style::Lines
    };
    let mut cmd = if args.shell { Command::shell(args.command.join(" ")) } else { Command::new(args.command) };
    if let Some(t) = args.reach.command_timeout {
        cmd = cmd.with_timeout(t);
    }
    let mut printer = Printer::new(style);
    let mut tally = Tally::default();
    let job = move |ctx: Context| {
        let cmd = cmd.clone();
        async move { ctx.check(cmd).await.map_err(|e| Trouble::Failed(e.to_string())) }
    };
    let ended = drive(&args.reach, hosts, job, |host, result, took| {
        let reply = Reply { host, result, took };
        tally.add(&reply.host, reply.result.as_ref().map(exit_trouble));
        printer.answer(&reply);
    })
    .await?;
    printer.finish();
    Ok(tally.finish(ended))
}

/// Why an output counts as a failure, if it does.
fn exit_trouble(output: &Output) -> Option<String> {
    match output.exit {
        e if e.success() => None,
        hypha::process::Exit::Code(code) => Some(format!("exited with code {code}")),
        hypha::process::Exit::Signal(signal) => {
            Some(format!("killed by signal {signal} (status {})", status(output.exit)))
        }
        other => Some(format!("ended: {other}")),
    }
}

/// What `ping` learns of each agent.
#[derive(Debug)]
struct Pong {
    hello: hypha::runtime::proto::Hello,
    uploaded: Option<u64>,
    latency: Duration,
}

async fn ping(args: args::Ping) -> anyhow::Result<u8> {
    let hosts = targets::methods(&args.targets, &args.reach)?;
    let json = args.json;
    let mut out = Out::default();
    let mut tally = Tally::default();
    let job = |ctx: Context| async move {
        let t = Instant::now();
        ctx.call(Ping).await.map_err(|e| Trouble::Failed(e.to_string()))?;
        Ok(Pong { latency: t.elapsed(), hello: ctx.hello(), uploaded: ctx.uploaded() })
    };
    let ended = drive(&args.reach, hosts, job, |host, result: Result<Pong, Trouble>, _| {
        tally.add(&host, result.as_ref().map(|_| None));
        let line = match (&result, json) {
            (Ok(p), false) => format!(
                "{host}: pid {} user {} on {} ({}), protocol {}, agent {} {}, ping {:.2?}",
                p.hello.pid,
                p.hello.user,
                p.hello.host,
                p.hello.arch,
                p.hello.protocol,
                p.hello.binary_hash.get(..12).unwrap_or(&p.hello.binary_hash),
                p.uploaded.map_or("cached".to_owned(), |n| format!("uploaded ({n} bytes)")),
                p.latency,
            ),
            (Ok(p), true) => serde_json::json!({
                "host": host,
                "pid": p.hello.pid,
                "user": p.hello.user,
                "protocol": p.hello.protocol,
                "agent": p.hello.binary_hash,
                "uploaded": p.uploaded,
                "seconds": p.latency.as_secs_f64(),
                "error": null,
            })
            .to_string(),
            (Err(Trouble::Failed(why) | Trouble::Unreachable(why)), true) => {
                serde_json::json!({ "host": host, "error": why }).to_string()
            }
            // The summary says why.
            (Err(_), false) => return,
        };
        out.line(&line);
    })
    .await?;
    Ok(tally.finish(ended))
}

/// How a round ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every host answered.
    Done,
    /// Ctrl-C.
    Interrupted,
}

/// Start a context on each host (at most `--fanout` starts at once; with `--sudo`, one more hop
/// on each), run `job` on each as soon as it is up, and hand each host's answer to `answer` as it
/// comes, with the time its job took. On Ctrl-C the jobs running are dropped, and then the fleet
/// is shut down.
async fn drive<T, F, Fut>(
    reach: &Reach,
    hosts: targets::Hosts,
    job: F,
    mut answer: impl FnMut(String, Result<T, Trouble>, Duration),
) -> anyhow::Result<Ended>
where
    T: Send + 'static,
    F: Fn(Context) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, Trouble>> + Send + 'static,
{
    let rt = Runtime::new(Handlers::new()).context("starting the runtime")?;
    let mut fleet = Fleet::new(&rt).with_fanout(reach.fanout as usize);
    if let Some(t) = reach.connect_timeout {
        fleet = fleet.with_connect_timeout(t);
    }
    let connect_timeout = reach.connect_timeout.unwrap_or(hypha::fleet::DEFAULT_CONNECT_TIMEOUT);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut starts = fleet.start(hosts);
    let (mut starting, mut jobs) = (true, JoinSet::new());
    while starting || !jobs.is_empty() {
        tokio::select! {
            _ = &mut interrupt => {
                // Dropping a job drops its call: its command is killed on its host. Wait until
                // every job is gone, so no call outlives the fleet's shutdown.
                jobs.abort_all();
                while jobs.join_next().await.is_some() {}
                Out::default().err("hypha: interrupted");
                let stop = async {
                    fleet.shutdown().await;
                    rt.shutdown().await;
                };
                tokio::select! {
                    _ = tokio::time::timeout(INTERRUPTED_GRACE, stop) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return Ok(Ended::Interrupted);
            }
            started = starts.next(), if starting => {
                let Some(Answer { host, outcome }) = started else {
                    starting = false;
                    continue;
                };
                match outcome {
                    Outcome::Done(()) => match fleet.up().into_iter().find(|(name, _)| *name == host) {
                        Some((_, ctx)) => {
                            let (rt, sudo) = (rt.clone(), reach.sudo.clone());
                            let work = job_on(rt, ctx, sudo, connect_timeout, job.clone());
                            jobs.spawn(async move {
                                let (result, took) = work.await;
                                (host, result, took)
                            });
                        }
                        None => answer(host, Err(Trouble::Unreachable("lost after it started".into())), Duration::ZERO),
                    },
                    Outcome::Unreachable(why) | Outcome::Failed(why) => {
                        answer(host, Err(Trouble::Unreachable(why)), Duration::ZERO)
                    }
                    _ => answer(host, Err(Trouble::Unreachable("no answer".into())), Duration::ZERO),
                }
            }
            Some(done) = jobs.join_next() => {
                let (host, result, took) = done.context("a job panicked")?;
                answer(host, result, took);
            }
        }
    }
    fleet.shutdown().await;
    rt.shutdown().await;
    Ok(Ended::Done)
}

/// `job` on `ctx`, or on a sudo hop started via `ctx`; its result and how long it took (the hop's
/// start included).
async fn job_on<T, F, Fut>(
    rt: Runtime,
    ctx: Context,
    sudo: Option<String>,
    connect_timeout: Duration,
    job: F,
) -> (Result<T, Trouble>, Duration)
where
    F: Fn(Context) -> Fut,
    Fut: Future<Output = Result<T, Trouble>>,
{
    let t = Instant::now();
    let ctx = match sudo {
        None => ctx,
        Some(user) => {
            let name = format!("{} (sudo {user})", ctx.name());
            match rt.start(Sudo::new(&user)).via(&ctx).name(name).timeout(connect_timeout).await {
                Ok(hop) => hop,
                Err(e) => return (Err(Trouble::Unreachable(format!("sudo {user}: {e}"))), t.elapsed()),
            }
        }
    };
    (job(ctx).await, t.elapsed())
}

/// The hosts that failed and those not reached, with why; the exit status they make.
#[derive(Debug, Default)]
struct Tally {
    failed: Vec<(String, String)>,
    unreachable: Vec<(String, String)>,
}

impl Tally {
    /// Count one host: `Ok(None)` it did well, `Ok(Some(why))` its answer counts as a failure.
    fn add(&mut self, host: &str, result: Result<Option<String>, &Trouble>) {
        match result {
            Ok(None) => {}
            Ok(Some(why)) => self.failed.push((host.to_owned(), why)),
            Err(Trouble::Failed(why)) => self.failed.push((host.to_owned(), why.clone())),
            Err(Trouble::Unreachable(why)) => self.unreachable.push((host.to_owned(), why.clone())),
        }
    }

    /// Print the summary on stderr (nothing when all went well); the exit status.
    fn finish(self, ended: Ended) -> u8 {
        let mut out = Out::default();
        for (what, hosts) in [("failed", &self.failed), ("unreachable", &self.unreachable)] {
            // Hosts that failed alike, on one line.
            let mut by_why: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for (host, why) in hosts {
                by_why.entry(why).or_default().push(host);
            }
            for (why, hosts) in by_why {
                out.err(&format!("hypha: {what}: {}: {why}", fold(&hosts)));
            }
        }
        if ended == Ended::Interrupted {
            return INTERRUPTED;
        }
        match (self.failed.is_empty(), self.unreachable.is_empty()) {
            (true, true) => OK,
            (false, true) => FAILED,
            (true, false) => UNREACHABLE,
            (false, false) => FAILED_AND_UNREACHABLE,
        }
    }
}
