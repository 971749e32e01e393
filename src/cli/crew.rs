//! The crew: the contexts of a run (of one command, of a `shell`, or of the `--persist` server),
//! and a round of one job across them.
//!
//! A round starts what is not up yet (at most the fan-out at once, directly or through the
//! gateways of `--via`, with a sudo hop on each host when asked), runs the job on each host as soon
//! as that host is up, and sends what happens as [`Event`]s: the lines of a command as they come,
//! then one answer per host. Dropping a round stops it: its starts stop, and its commands are
//! killed on their hosts (a dropped call kills its command's process group). The contexts stay up
//! for the next round until [`Crew::shutdown`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypha::files::{FileError, Keep, Transfer};
use hypha::fleet::{Answers, Fleet, Outcome};
use hypha::process::{Command, Exit, Line};
use hypha::runtime::proto::Hello;
use hypha::{CallError, Context, Ping, Runtime, Sudo};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::targets::{Plan, Way};

/// What a round does on each host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Job {
    /// Run a command; its lines come as [`Event::Line`], its exit as the answer.
    Exec(Command),
    /// Time a call.
    Ping,
    /// Copy files or trees here to `dest` there.
    Push { sources: Vec<PathBuf>, dest: PathBuf, keep: Keep },
    /// Fetch `source` there to `destdir/HOST/` here.
    Pull { source: PathBuf, destdir: PathBuf, keep: Keep },
}

/// Why a host has no answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Trouble {
    /// It was reached, and the call failed there (a command timeout, a program not found, ...).
    Failed(String),
    /// It could not be reached, or was lost.
    Unreachable(String),
}

/// One host's answer to a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Done {
    Exit(Exit),
    Pong(Pong),
    Moved(Transfer),
}

/// What `ping` learns of each agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Pong {
    pub(crate) hello: Hello,
    pub(crate) uploaded: Option<u64>,
    /// How long its start took in this round, from the round's beginning (the fan-out's queue
    /// included); `None` when it was up already.
    pub(crate) start: Option<Duration>,
    pub(crate) latency: Duration,
}

/// What a round reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    /// A line a host's command printed.
    Line { host: String, line: Line },
    /// A host's answer, and how long its job took (its sudo hop's start included).
    Answer { host: String, result: Result<Done, Trouble>, took: Duration },
}

/// How long a host whose call found its link gone gets to be marked down before it answers.
const LOST_NOTICE: Duration = Duration::from_secs(5);

/// Events waiting for the printer, at most: a slow reader holds the commands back (through each
/// stream's credit) rather than filling memory.
pub(crate) const EVENTS: usize = 4096;

/// The contexts of a run.
#[derive(Debug)]
pub(crate) struct Crew {
    rt: Runtime,
    fleet: Fleet,
    connect_timeout: Duration,
    /// How to reach each gateway of `--via`.
    gateway_plans: Vec<Plan>,
    /// Gateways by name, once up.
    gateways: Mutex<HashMap<String, Context>>,
    /// Gateways that could not be started, and why.
    gateways_down: Mutex<HashMap<String, String>>,
    /// Sudo hops by host, once up.
    hops: Arc<Mutex<HashMap<String, Context>>>,
    /// Hosts that could not be started, and why.
    down: Mutex<HashMap<String, String>>,
}

impl Crew {
    /// A crew whose contexts `rt` starts, at most `fanout` at once; `gateways` says how to reach
    /// the gateways plans name; with `reroute`, the hosts of a gateway that is lost start again
    /// through the others.
    pub(crate) fn new(
        rt: Runtime,
        fanout: usize,
        connect_timeout: Option<Duration>,
        reroute: bool,
        gateways: Vec<Plan>,
    ) -> Crew {
        let connect_timeout = connect_timeout.unwrap_or(hypha::fleet::DEFAULT_CONNECT_TIMEOUT);
        let fleet = Fleet::new(&rt).with_fanout(fanout).with_connect_timeout(connect_timeout).with_reroute(reroute);
        Crew {
            rt,
            fleet,
            connect_timeout,
            gateway_plans: gateways,
            gateways: Mutex::default(),
            gateways_down: Mutex::default(),
            hops: Arc::default(),
            down: Mutex::default(),
        }
    }

    /// Run `job` on every host of `plans`, starting those not up (and, with `retry`, those that
    /// could not be started before); each line and answer goes to `events`. Ends once every host
    /// has answered.
    pub(crate) async fn round(&self, plans: &[Plan], job: &Job, events: &mpsc::Sender<Event>, retry: bool) {
        let began = Instant::now();
        let mut jobs = JoinSet::new();
        let mut direct = Vec::new();
        let mut through: HashMap<Vec<String>, Vec<Plan>> = HashMap::new();
        for plan in plans {
            if let Some(ctx) = self.fleet.get(&plan.name).filter(|c| !c.state().is_terminal()) {
                jobs.spawn(self.job(plan, ctx, None, job, events));
                continue;
            }
            if !retry {
                let known = lock(&self.down).get(&plan.name).cloned();
                if let Some(why) = known {
                    unreachable(events, &plan.name, why).await;
                    continue;
                }
            }
            if plan.via.is_empty() {
                direct.push(plan.clone());
            } else {
                through.entry(plan.via.clone()).or_default().push(plan.clone());
            }
        }
        let planned: HashMap<&str, &Plan> = plans.iter().map(|p| (p.name.as_str(), p)).collect();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let mut starts = JoinSet::new();
        if !direct.is_empty() {
            let answers = self.fleet.start(direct.iter().map(|p| (p.name.clone(), p.way.clone().boxed())));
            starts.spawn(forward(answers, started_tx.clone()));
        }
        // The gateways start while the direct hosts do, and then their hosts.
        let through = async move {
            let mut starts = JoinSet::new();
            for (via, hosts) in through {
                self.start_through(&via, hosts, retry, events, &started_tx, &mut starts).await;
            }
            drop(started_tx);
            while starts.join_next().await.is_some() {}
        };
        tokio::pin!(through);
        let mut routing = true;
        loop {
            tokio::select! {
                () = &mut through, if routing => routing = false,
                started = started.recv() => {
                    let Some((host, outcome)) = started else { break };
                    let Some(plan) = planned.get(host.as_str()) else { continue };
                    match (outcome, self.fleet.get(&host)) {
                        (Outcome::Done(()), Some(ctx)) => {
                            lock(&self.down).remove(&host);
                            jobs.spawn(self.job(plan, ctx, Some(began.elapsed()), job, events));
                        }
                        (Outcome::Done(()), None) => unreachable(events, &host, "lost after it started".into()).await,
                        (Outcome::Unreachable(why) | Outcome::Failed(why), _) => {
                            lock(&self.down).insert(host.clone(), why.clone());
                            unreachable(events, &host, why).await;
                        }
                        (_, _) => unreachable(events, &host, "no answer".into()).await,
                    }
                }
                Some(_) = jobs.join_next() => {}
            }
        }
        while jobs.join_next().await.is_some() {}
    }

    /// Start `hosts` through the gateways of `via` (started first if they are not up), dealt
    /// between those that came up; their answers go to `tx`. With none up, every host answers as
    /// unreachable, naming the gateways and why.
    async fn start_through(
        &self,
        via: &[String],
        hosts: Vec<Plan>,
        retry: bool,
        events: &mpsc::Sender<Event>,
        tx: &mpsc::UnboundedSender<(String, Outcome<()>)>,
        starts: &mut JoinSet<()>,
    ) {
        let gateways = self.gateways(via, retry).await;
        if gateways.is_empty() {
            let why = {
                let down = lock(&self.gateways_down);
                let why: Vec<String> = via
                    .iter()
                    .map(|g| format!("gateway {g}: {}", down.get(g).map_or("not started", String::as_str)))
                    .collect();
                why.join("; ")
            };
            for plan in hosts {
                unreachable(events, &plan.name, why.clone()).await;
            }
            return;
        }
        // Each gateway gets its share of the hosts (each method type apart: a start through a
        // gateway carries its method's type), and all run under the fleet's one fan-out.
        let (mut local, mut ssh, mut openssh) = (Vec::new(), Vec::new(), Vec::new());
        for plan in hosts {
            match plan.way {
                Way::Local(m) => local.push((plan.name, m)),
                Way::Ssh(m) => ssh.push((plan.name, m)),
                Way::OpenSsh(m) => openssh.push((plan.name, m)),
            }
        }
        if !local.is_empty() {
            starts.spawn(forward(self.fleet.start_through(&gateways, local), tx.clone()));
        }
        if !ssh.is_empty() {
            starts.spawn(forward(self.fleet.start_through(&gateways, ssh), tx.clone()));
        }
        if !openssh.is_empty() {
            starts.spawn(forward(self.fleet.start_through(&gateways, openssh), tx.clone()));
        }
    }

    /// The gateways of `via` that are up, starting those that are not (all at once; with
    /// `retry`, also those that could not be started before).
    async fn gateways(&self, via: &[String], retry: bool) -> Vec<Context> {
        let mut starting = JoinSet::new();
        let mut up = Vec::new();
        for name in via {
            let known = lock(&self.gateways).get(name).cloned();
            if let Some(ctx) = known.filter(|c| !c.state().is_terminal()) {
                up.push(ctx);
                continue;
            }
            if !retry && lock(&self.gateways_down).contains_key(name) {
                continue;
            }
            let Some(plan) = self.gateway_plans.iter().find(|p| p.name == *name) else { continue };
            let start = self.rt.start(plan.way.clone().boxed()).name(name.clone());
            let start = start.timeout(self.connect_timeout);
            let name = name.clone();
            starting.spawn(async move { (name, start.await) });
        }
        while let Some(done) = starting.join_next().await {
            let Ok((name, started)) = done else { continue };
            match started {
                Ok(ctx) => {
                    lock(&self.gateways_down).remove(&name);
                    lock(&self.gateways).insert(name, ctx.clone());
                    up.push(ctx);
                }
                Err(e) => {
                    lock(&self.gateways_down).insert(name.clone(), e.to_string());
                }
            }
        }
        up
    }

    /// `job` on `plan`'s host, as soon as its sudo hop (if any) is up; its answer goes to
    /// `events`.
    fn job(
        &self,
        plan: &Plan,
        ctx: Context,
        start: Option<Duration>,
        job: &Job,
        events: &mpsc::Sender<Event>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (host, sudo, job, events) = (plan.name.clone(), plan.sudo.clone(), job.clone(), events.clone());
        let (rt, hops, timeout) = (self.rt.clone(), self.hops.clone(), self.connect_timeout);
        async move {
            let hop = sudo.as_ref().and_then(|_| lock(&hops).get(&host).cloned());
            let t = Instant::now();
            let ctx = match (sudo, hop.filter(|h| !h.state().is_terminal())) {
                (None, _) => ctx,
                (Some(_), Some(hop)) => hop,
                (Some(user), None) => {
                    let name = format!("{host} (sudo {user})");
                    match rt.start(Sudo::new(&user)).via(&ctx).name(name).timeout(timeout).await {
                        Ok(hop) => {
                            lock(&hops).insert(host.clone(), hop.clone());
                            hop
                        }
                        Err(e) => {
                            let result = Err(Trouble::Unreachable(format!("sudo {user}: {e}")));
                            let _ = events.send(Event::Answer { host, result, took: t.elapsed() }).await;
                            return;
                        }
                    }
                }
            };
            let result = run(&host, &ctx, start, &job, &events).await;
            let result = result.map_err(|trouble| match trouble {
                // The link may end a moment after the call failed for it.
                Trouble::Failed(why) if ctx.state().is_terminal() => Trouble::Unreachable(why),
                trouble => trouble,
            });
            if let Err(Trouble::Unreachable(_)) = &result {
                // The call saw the link go before the context did: once it has (bounded), the
                // next round starts the host again rather than calling it.
                let _ = tokio::time::timeout(LOST_NOTICE, ctx.closed()).await;
            }
            let _ = events.send(Event::Answer { host, result, took: t.elapsed() }).await;
        }
    }

    /// Shut every context down: hosts, their hops, then the gateways.
    pub(crate) async fn shutdown(&self) {
        let hops: Vec<Context> = lock(&self.hops).drain().map(|(_, c)| c).collect();
        all_down(hops).await;
        self.fleet.shutdown().await;
        let gateways: Vec<Context> = lock(&self.gateways).drain().map(|(_, c)| c).collect();
        all_down(gateways).await;
        self.rt.shutdown().await;
    }
}

async fn all_down(contexts: Vec<Context>) {
    let mut waits = JoinSet::new();
    for ctx in contexts {
        waits.spawn(async move { ctx.shutdown().await });
    }
    while waits.join_next().await.is_some() {}
}

/// Why a call failed, as the summary says it after the host's name: a handler's own error and
/// its causes, without the path of contexts and the agent's pid (the host is named already, and
/// hosts that failed alike then fold into one line); anything else in full.
fn why(e: &CallError) -> String {
    match e {
        CallError::Remote(r) => {
            let mut text = r.message.clone();
            for cause in &r.causes {
                text.push_str(": ");
                text.push_str(cause);
            }
            text
        }
        other => other.to_string(),
    }
}

/// A failed call as the summary counts it: a host whose link went is unreachable.
fn trouble(e: &CallError) -> Trouble {
    match e {
        CallError::Disconnected { .. } | CallError::NoRoute(_) => Trouble::Unreachable(why(e)),
        _ => Trouble::Failed(why(e)),
    }
}

fn file_trouble(e: &FileError) -> Trouble {
    match e {
        FileError::Call(e) => trouble(e),
        other => Trouble::Failed(other.to_string()),
    }
}

/// Run `job` in `ctx`, sending a command's lines as they come.
async fn run(
    host: &str,
    ctx: &Context,
    start: Option<Duration>,
    job: &Job,
    events: &mpsc::Sender<Event>,
) -> Result<Done, Trouble> {
    match job {
        Job::Exec(cmd) => {
            let mut lines = ctx.lines(cmd.clone()).await.map_err(|e| trouble(&e))?;
            while let Some(line) = lines.next().await {
                if events.send(Event::Line { host: host.to_owned(), line }).await.is_err() {
                    // Nobody listens: the command is dropped, and killed.
                    return Err(Trouble::Failed("stopped".into()));
                }
            }
            Ok(Done::Exit(lines.exit().await.map_err(|e| trouble(&e))?))
        }
        Job::Ping => {
            let t = Instant::now();
            ctx.call(Ping).await.map_err(|e| trouble(&e))?;
            Ok(Done::Pong(Pong { latency: t.elapsed(), start, hello: ctx.hello(), uploaded: ctx.uploaded() }))
        }
        Job::Push { sources, dest, keep } => {
            let mut total = Transfer::default();
            for src in sources {
                let moved = ctx.push(src, dest.clone(), *keep).await.map_err(|e| file_trouble(&e))?;
                total = add(total, moved);
            }
            Ok(Done::Moved(total))
        }
        Job::Pull { source, destdir, keep } => {
            let dir = destdir.join(file_name(host).map_err(Trouble::Failed)?);
            std::fs::create_dir_all(&dir).map_err(|e| Trouble::Failed(format!("{}: {e}", dir.display())))?;
            let moved = ctx.pull(source.clone(), &dir, *keep).await.map_err(|e| file_trouble(&e))?;
            Ok(Done::Moved(moved))
        }
    }
}

fn add(a: Transfer, b: Transfer) -> Transfer {
    let mut t = a;
    t.files += b.files;
    t.dirs += b.dirs;
    t.links += b.links;
    t.bytes += b.bytes;
    t.skipped += b.skipped;
    t
}

/// A host's name as a file name of its own (`/` cannot be in one, `.` and `..` are taken).
pub(crate) fn file_name(host: &str) -> Result<&Path, String> {
    if host.is_empty() || host == "." || host == ".." || host.contains('/') || host.contains('\0') {
        return Err(format!("{host:?} cannot name a file"));
    }
    Ok(Path::new(host))
}

async fn unreachable(events: &mpsc::Sender<Event>, host: &str, why: String) {
    let event = Event::Answer { host: host.to_owned(), result: Err(Trouble::Unreachable(why)), took: Duration::ZERO };
    let _ = events.send(event).await;
}

/// Pass each answer of `answers` on, as it comes.
async fn forward(mut answers: Answers<()>, tx: mpsc::UnboundedSender<(String, Outcome<()>)>) {
    while let Some(a) = answers.next().await {
        if tx.send((a.host, a.outcome)).is_err() {
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
