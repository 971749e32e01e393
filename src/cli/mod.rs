//! The `hypha` command: `exec`, `ping`, `copy`, `fetch` and `shell` on the targets of a nodeset,
//! with a bounded fan-out.
//!
//! Each subcommand turns its targets into [`targets::Plan`]s (how to reach each host), and runs
//! one [`crew::Job`] across them in a round: on a [`crew::Crew`] of its own, or with `--persist`
//! on the crew of a background process of this user's ([`persist`]). The round's events — the
//! lines of commands as they come, one answer per host — are printed as they arrive
//! ([`output`]); a summary of the hosts that failed or could not be reached goes to stderr, and
//! the exit status says which of those happened. Ctrl-C drops the round (a dropped command is
//! killed with its process group on its host) and shuts the contexts down: exit status 130.

pub(crate) mod args;
mod config;
mod crew;
mod output;
mod persist;
mod targets;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use hypha::files::Keep;
use hypha::nodeset::fold;
use hypha::process::{Command, Exit};
use hypha::{Handlers, Options, Runtime};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

use args::{Cli, Cmd, Print, Reach};
use config::Config;
use crew::{Crew, Done, Event, Job, Pong, Trouble};
use output::{status, Out, Printer, Style};
use targets::Plan;
pub(crate) use targets::Usage;

/// Every host did well.
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
    if let Cmd::Persist(args) = &cli.command {
        return persist::serve(&args.socket).await;
    }
    let config = &Config::load(cli.config.as_deref())?;
    match cli.command {
        Cmd::Exec(args) => {
            let mut cmd = if args.shell { Command::shell(args.command.join(" ")) } else { Command::new(args.command) };
            if let Some(t) = args.reach.command_timeout {
                cmd = cmd.with_timeout(t);
            }
            let mut report = Report::exec(&args.print, config.run_params(&args.targets).format)?;
            once(&args.reach, config, &args.targets, Job::Exec(cmd), &mut report).await
        }
        Cmd::Ping(args) => {
            let mut report = Report::new(Shown::Ping { json: args.json });
            once(&args.reach, config, &args.targets, Job::Ping, &mut report).await
        }
        Cmd::Copy(args) => {
            let mut paths = args.paths;
            let dest = PathBuf::from(paths.pop().context("no destination")?);
            let here = std::env::current_dir().context("the working directory")?;
            let sources = paths.into_iter().map(|p| here.join(p)).collect();
            let job = Job::Push { sources, dest, keep: keep(args.preserve) };
            let mut report = Report::new(Shown::Moved { json: args.json });
            once(&args.reach, config, &args.targets, job, &mut report).await
        }
        Cmd::Fetch(args) => {
            let here = std::env::current_dir().context("the working directory")?;
            let job =
                Job::Pull { source: args.source.into(), destdir: here.join(args.destdir), keep: keep(args.preserve) };
            let mut report = Report::new(Shown::Moved { json: args.json });
            once(&args.reach, config, &args.targets, job, &mut report).await
        }
        Cmd::Shell(args) => shell(args, config).await,
        Cmd::Persist(_) => unreachable!("served above"),
    }
}

fn keep(preserve: bool) -> Keep {
    if preserve {
        Keep::mode().with_times()
    } else {
        Keep::mode()
    }
}

/// What a run is given to start its contexts with.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Setup {
    plans: Vec<Plan>,
    gateways: Vec<Plan>,
    fanout: usize,
    connect_timeout: Option<Duration>,
    reroute: bool,
    agents: Vec<(String, PathBuf)>,
}

impl Setup {
    fn new(reach: &Reach, config: &Config, targets: &str) -> anyhow::Result<Setup> {
        let plans = targets::plans(targets, reach, config)?;
        // Every gateway a host names, from `--via` or its groups, once.
        let mut named: Vec<&str> = Vec::new();
        for gateway in plans.iter().flat_map(|p| &p.via) {
            if !named.contains(&gateway.as_str()) {
                named.push(gateway);
            }
        }
        let gateways = named.into_iter().map(|g| targets::gateway(g, reach, config)).collect::<Result<_, _>>()?;
        // An agent build must be readable now, not when a host of its kind turns up.
        let agents = reach
            .agent
            .iter()
            .map(|(arch, path)| {
                let path = std::fs::canonicalize(path)
                    .map_err(|e| Usage(format!("--agent {arch}={}: {e}", path.display())))?;
                Ok((arch.clone(), path))
            })
            .collect::<Result<_, Usage>>()?;
        let fanout = reach.fanout.or(config.run_params(targets).fanout);
        let fanout = fanout.unwrap_or(hypha::fleet::DEFAULT_FANOUT as u32) as usize;
        let (connect_timeout, reroute) = (reach.connect_timeout, reach.reroute);
        Ok(Setup { plans, gateways, fanout, connect_timeout, reroute, agents })
    }

    /// A crew of this process for these plans.
    fn crew(&self) -> anyhow::Result<Crew> {
        let mut options = Options::default();
        for (arch, path) in &self.agents {
            options = options.agent_for(arch, path);
        }
        let rt = Runtime::with_options(Handlers::new(), options).context("starting the runtime")?;
        Ok(Crew::new(rt, self.fanout, self.connect_timeout, self.reroute, self.gateways.clone()))
    }
}

/// How a round ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every host answered.
    Done,
    /// Ctrl-C.
    Interrupted,
}

/// Where the contexts of a run live: here, or in the `--persist` process.
#[derive(Debug)]
enum Session {
    Here(Crew),
    Persist(persist::Client),
}

impl Session {
    async fn open(setup: &Setup, reach: &Reach, config: &Config) -> anyhow::Result<Session> {
        match reach.persist {
            None => Ok(Session::Here(setup.crew()?)),
            Some(keep) => {
                // Runs that reach hosts alike (same options, same groups file) share contexts;
                // how long they stay, and each command's timeout, are not how a host is reached.
                let reach = Reach { persist: None, command_timeout: None, ..reach.clone() };
                let key = format!("{reach:?} {:?}", config.fingerprint());
                Ok(Session::Persist(persist::Client::open(setup.clone(), key, keep).await?))
            }
        }
    }

    /// One round of `job`, its events to `report` as they come, until every host has answered
    /// or Ctrl-C (which stops the round: its commands are killed).
    async fn round(&mut self, plans: &[Plan], job: &Job, retry: bool, report: &mut Report) -> anyhow::Result<Ended> {
        report.start(plans.len());
        let (tx, mut rx) = mpsc::channel(crew::EVENTS);
        let work = async {
            match self {
                Session::Here(crew) => {
                    crew.round(plans, job, &tx, retry).await;
                    Ok(())
                }
                Session::Persist(client) => client.round(plans, job, retry, &tx).await,
            }
        };
        tokio::pin!(work);
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut working = true;
        let ended = loop {
            tokio::select! {
                _ = &mut interrupt => break Ended::Interrupted,
                done = &mut work, if working => {
                    done?;
                    working = false;
                }
                event = rx.recv() => match event {
                    Some(event) => report.event(event),
                    None => break Ended::Done,
                },
                _ = tick.tick() => report.printer.out.tick(),
            }
            if !working && rx.is_empty() {
                // The round is over and every event it sent is printed.
                break Ended::Done;
            }
        };
        report.finish_round();
        Ok(ended)
    }

    async fn close(self) {
        match self {
            Session::Here(crew) => crew.shutdown().await,
            Session::Persist(client) => client.close().await,
        }
    }
}

/// One round of `job` on `targets`, then the summary; the exit status.
async fn once(reach: &Reach, config: &Config, targets: &str, job: Job, report: &mut Report) -> anyhow::Result<u8> {
    let setup = Setup::new(reach, config, targets)?;
    let mut session = Session::open(&setup, reach, config).await?;
    let ended = session.round(&setup.plans, &job, true, report).await?;
    if ended == Ended::Interrupted {
        Out::default().err("hypha: interrupted");
        tokio::select! {
            _ = tokio::time::timeout(INTERRUPTED_GRACE, session.close()) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        report.tally.summary();
        return Ok(INTERRUPTED);
    }
    session.close().await;
    Ok(report.tally.summary())
}

/// `hypha shell`: each line read runs on every target, on the same contexts.
async fn shell(args: args::Shell, config: &Config) -> anyhow::Result<u8> {
    let setup = Setup::new(&args.reach, config, &args.targets)?;
    let mut session = Session::open(&setup, &args.reach, config).await?;
    let format = config.run_params(&args.targets).format;
    let prompt = std::io::stdin().is_terminal();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut code = OK;
    loop {
        if prompt {
            use std::io::Write as _;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "hypha> ").and_then(|()| err.flush());
        }
        let line = tokio::select! {
            line = lines.next_line() => line.context("reading stdin")?,
            _ = tokio::signal::ctrl_c() => { Out::default().err(""); continue }
        };
        let Some(line) = line else { break };
        let line = line.trim();
        match line {
            "" => continue,
            "exit" | "quit" => break,
            _ => {}
        }
        let mut cmd = Command::shell(line);
        if let Some(t) = args.reach.command_timeout {
            cmd = cmd.with_timeout(t);
        }
        let mut report = Report::exec(&args.print, format.clone())?;
        // A host that could not be started is not tried again on every line.
        let ended = session.round(&setup.plans, &Job::Exec(cmd), false, &mut report).await?;
        code = report.tally.summary();
        if ended == Ended::Interrupted {
            Out::default().err("hypha: interrupted");
            code = INTERRUPTED;
        }
    }
    session.close().await;
    Ok(code)
}

/// What a subcommand prints of each answer.
#[derive(Debug)]
enum Shown {
    Exec,
    Ping { json: bool },
    Moved { json: bool },
}

/// Prints a round's events and counts its hosts.
#[derive(Debug)]
struct Report {
    shown: Shown,
    printer: Printer,
    tally: Tally,
}

impl Report {
    fn new(shown: Shown) -> Report {
        Report { shown, printer: Printer::new(Style::Lines, None, None), tally: Tally::default() }
    }

    /// For `exec` and `shell`: as `print` says, else in the groups' `format` if they set one.
    fn exec(print: &Print, format: Option<String>) -> anyhow::Result<Report> {
        let style = if print.json {
            Style::Json
        } else if let Some(format) =
            print.format.as_ref().or(format.as_ref()).filter(|_| !print.gather && !print.gather_all)
        {
            Style::format(format)?
        } else if print.gather || print.gather_all {
            Style::Gather { stderr: print.gather_all }
        } else {
            Style::Lines
        };
        let printer = Printer::new(style, print.outdir.clone(), print.errdir.clone());
        Ok(Report { shown: Shown::Exec, printer, tally: Tally::default() })
    }

    fn start(&mut self, hosts: usize) {
        self.printer.out.progress(hosts);
    }

    fn event(&mut self, event: Event) {
        let (host, result, took) = match event {
            Event::Line { host, line } => return self.printer.line(&host, line),
            Event::Answer { host, result, took } => (host, result, took),
        };
        let trouble = match (&self.shown, &result) {
            (Shown::Exec, Ok(Done::Exit(exit))) => {
                let kept = self.printer.answer(&host, Ok(*exit), took);
                kept.or_else(|| exit_trouble(*exit))
            }
            (Shown::Exec, Err(trouble)) => {
                self.printer.answer(&host, Err(trouble), took);
                None
            }
            (Shown::Ping { json }, _) => {
                self.pong(&host, &result, *json);
                None
            }
            (Shown::Moved { json }, _) => {
                self.moved(&host, &result, took, *json);
                None
            }
            (_, Ok(other)) => Some(format!("unexpected answer {other:?}")),
        };
        let counted = match (&result, trouble) {
            (Err(t), _) => Err(t),
            (Ok(_), None) => Ok(None),
            (Ok(_), Some(why)) => Ok(Some(why)),
        };
        let how = match &counted {
            Ok(None) => Ok(true),
            Ok(Some(_)) | Err(Trouble::Failed(_)) => Ok(false),
            Err(Trouble::Unreachable(_)) => Err(()),
        };
        self.tally.add(&host, counted);
        self.printer.out.count(how);
    }

    fn finish_round(&mut self) {
        self.printer.out.done();
        self.printer.finish();
    }

    fn pong(&mut self, host: &str, result: &Result<Done, Trouble>, json: bool) {
        let line = match (result, json) {
            (Ok(Done::Pong(p)), false) => pong_line(host, p),
            (Ok(Done::Pong(p)), true) => serde_json::json!({
                "host": host,
                "pid": p.hello.pid,
                "user": p.hello.user,
                "arch": p.hello.arch,
                "protocol": p.hello.protocol,
                "agent": p.hello.binary_hash,
                "uploaded": p.uploaded,
                "start_seconds": p.start.map(|d| d.as_secs_f64()),
                "seconds": p.latency.as_secs_f64(),
                "error": null,
            })
            .to_string(),
            (Err(Trouble::Failed(why) | Trouble::Unreachable(why)), true) => {
                serde_json::json!({ "host": host, "error": why }).to_string()
            }
            // The summary says why.
            _ => return,
        };
        self.printer.out.line(&line);
    }

    fn moved(&mut self, host: &str, result: &Result<Done, Trouble>, took: Duration, json: bool) {
        if !json {
            // As scp and clush: quiet when it went well; the summary names what did not.
            return;
        }
        let line = match result {
            Ok(Done::Moved(t)) => serde_json::json!({
                "host": host,
                "files": t.files,
                "dirs": t.dirs,
                "links": t.links,
                "bytes": t.bytes,
                "skipped": t.skipped,
                "seconds": took.as_secs_f64(),
                "error": null,
            }),
            Err(Trouble::Failed(why)) => serde_json::json!({ "host": host, "error": why, "unreachable": false }),
            Err(Trouble::Unreachable(why)) => serde_json::json!({ "host": host, "error": why, "unreachable": true }),
            Ok(_) => return,
        };
        self.printer.out.line(&line.to_string());
    }
}

fn pong_line(host: &str, p: &Pong) -> String {
    format!(
        "{host}: pid {} user {} on {} ({}), protocol {}, agent {} {}, {}, ping {:.2?}",
        p.hello.pid,
        p.hello.user,
        p.hello.host,
        p.hello.arch,
        p.hello.protocol,
        p.hello.binary_hash.get(..12).unwrap_or(&p.hello.binary_hash),
        p.uploaded.map_or("cached".to_owned(), |n| format!("uploaded ({n} bytes)")),
        p.start.map_or("up already".to_owned(), |d| format!("started in {d:.2?}")),
        p.latency,
    )
}

/// Why an exit counts as a failure, if it does.
fn exit_trouble(exit: Exit) -> Option<String> {
    match exit {
        e if e.success() => None,
        Exit::Code(code) => Some(format!("exited with code {code}")),
        Exit::Signal(signal) => Some(format!("killed by signal {signal} (status {})", status(exit))),
        other => Some(format!("ended: {other}")),
    }
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
    fn summary(&self) -> u8 {
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
        match (self.failed.is_empty(), self.unreachable.is_empty()) {
            (true, true) => OK,
            (false, true) => FAILED,
            (true, false) => UNREACHABLE,
            (false, false) => FAILED_AND_UNREACHABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser as _;

    use super::*;

    fn setup(config: &str, line: &[&str]) -> Setup {
        let config = Config::parse(config, std::path::Path::new("test.toml")).unwrap();
        let cli = Cli::parse_from([&["hypha", "exec"][..], line, &["--", "true"]].concat());
        let Cmd::Exec(args) = cli.command else { unreachable!() };
        Setup::new(&args.reach, &config, &args.targets).unwrap()
    }

    fn destination(plan: &Plan) -> String {
        match &plan.way {
            targets::Way::Ssh(m) => format!("{}@{}:{}", m.user, m.host, m.port),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn groups_give_each_host_its_parameters_under_the_command_line() {
        let config = r#"
[defaults]
user = "ops"
[groups.web]
hosts = "web[1-2],admin@web3:2222"
port = 2200
via = "gw1"
sudo = "root"
fanout = 8
[groups.db]
hosts = "db1"
via = ["gw2", "gw3"]
fanout = 4
"#;
        let s = setup(config, &["@web,@db,other"]);
        let by_name: HashMap<&str, &Plan> = s.plans.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(destination(by_name["web1"]), "ops@web1:2200");
        assert_eq!(destination(by_name["admin@web3:2222"]), "admin@web3:2222");
        assert_eq!(destination(by_name["other"]), "ops@other:22");
        assert_eq!(
            (by_name["web1"].via.clone(), by_name["web1"].sudo.clone()),
            (vec!["gw1".into()], Some("root".into()))
        );
        assert_eq!(by_name["db1"].via, ["gw2", "gw3"]);
        assert!(by_name["other"].via.is_empty() && by_name["other"].sudo.is_none());
        // Each gateway once, reached as a host (the defaults' user), with no gateway of its own.
        let gateways: Vec<String> = s.gateways.iter().map(destination).collect();
        assert_eq!(gateways, ["ops@gw2:22", "ops@gw3:22", "ops@gw1:22"], "in the order of the hosts");
        assert!(s.gateways.iter().all(|g| g.via.is_empty() && g.sudo.is_none()));
        // The smallest fan-out of the groups named.
        assert_eq!(s.fanout, 4);

        // The command line beats them all, but not a target's own user and port.
        let s = setup(config, &["-l", "me", "-f", "16", "--via", "gw9", "@web"]);
        let by_name: HashMap<&str, &Plan> = s.plans.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(destination(by_name["web1"]), "me@web1:2200");
        assert_eq!(destination(by_name["admin@web3:2222"]), "admin@web3:2222");
        assert_eq!(by_name["web1"].via, ["gw9"]);
        assert_eq!(s.fanout, 16);
        assert_eq!(s.gateways.iter().map(destination).collect::<Vec<_>>(), ["me@gw9:22"]);
    }
}
