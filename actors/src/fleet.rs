//! A fleet: contexts on many hosts, started with a bounded fan-out, driven as one, and watched.
//!
//! [`Fleet::start`] starts a context on each host with at most [`Fleet::fanout`] starts (the
//! connection, the handshake, an upload) in flight at once, each bounded by the connect timeout;
//! the answers come as each host answers ([`Answers::next`]), and a [`Summary`] sorts them into
//! ok, failed and unreachable, by host, with reasons. The contexts stay up: a later
//! [`Fleet::call`] or [`Fleet::check`] costs one message per host.
//!
//! [`Fleet::start_through`] deals hosts over gateway contexts (ClusterShell's tree mode): each
//! gateway connects to its share from its own host and serves them the agent, under the fleet's
//! one fan-out (split across the gateways, not copied to each).
//!
//! The fleet is an actor (one per [`Fleet::new`]; the [`Fleet`] values are handles to it) that
//! owns the members and watches every context it started, and every gateway they run through: a
//! context that is lost is marked down at once, with why and through which gateway, so
//! [`Fleet::up`], [`Fleet::get`], [`Fleet::summary`] and the next round say so without a call
//! having to fail first. With [`Fleet::with_reroute`], the hosts of a gateway that is lost are
//! started again through another gateway of their assignment.
//!
//! ```no_run
//! # async fn f(rt: hypha_actors::Runtime) {
//! use hypha_actors::fleet::Fleet;
//! use hypha_bootstrap::process::Command;
//!
//! let fleet = Fleet::new(&rt).with_fanout(32);
//! let hosts = (1..=100).map(|i| (format!("web{i:02}"), Box::new(hypha_bootstrap::Ssh::new(format!("web{i:02}"))) as _));
//! fleet.start(hosts).collect().await;
//! let answers = fleet.check(Command::new(["uptime"])).collect().await;
//! let summary = hypha_actors::fleet::Summary::of_checks(&answers);
//! println!("{} ok, failed: {:?}, unreachable: {:?}", summary.ok.len(), summary.failed, summary.unreachable);
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use hypha_bootstrap::process::{Command, Output};
use hypha_bootstrap::{BootError, Method, Portable};
use hypha_runtime::{CallError, ContextId, EncodedRequest, RemoteErrorKind, Request};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tracing::warn;

use crate::{Context, Runtime, State};

/// How many starts a fleet runs at once unless told otherwise (as `clush`).
pub const DEFAULT_FANOUT: usize = 64;
/// How long a host may take to start unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors a context costs its controller, at most (a socket or pipes, and their
/// stderr): what the open-files limit is measured against.
const FDS_PER_CONTEXT: u64 = 4;
/// How long a gateway whose link is gone may take to be declared ended (its actor reaps its
/// process first): a start through it that failed for that is re-routed once it has.
const GATEWAY_NOTICE: Duration = Duration::from_secs(10);

type BoxStart = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Context, BootError>> + Send>>;
/// What became of one host.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<T> {
    /// It answered.
    Done(T),
    /// It was reached, and the call failed there (the handler's error, or a timeout).
    Failed(String),
    /// It could not be reached, or was lost.
    Unreachable(String),
}

/// One host's answer.
#[derive(Debug)]
pub struct Answer<T> {
    /// The host, as the fleet names it.
    pub host: String,
    /// What became of it.
    pub outcome: Outcome<T>,
}

/// Answers as they come, one per host. Dropping it gives up on the hosts that have not answered
/// yet: their starts stop, and their commands are killed.
#[derive(Debug)]
pub struct Answers<T> {
    rx: mpsc::UnboundedReceiver<Answer<T>>,
    /// One task per host; dropped with the answers, which aborts those still going.
    _tasks: tokio::task::JoinSet<()>,
}

impl<T> Answers<T> {
    /// The next host to answer, or `None` once every host has.
    pub async fn next(&mut self) -> Option<Answer<T>> {
        self.rx.recv().await
    }

    /// Every answer, in the order they came.
    pub async fn collect(mut self) -> Vec<Answer<T>> {
        let mut all = Vec::new();
        while let Some(a) = self.next().await {
            all.push(a);
        }
        all
    }
}

/// The hosts of a round of answers, sorted: ok, failed (with why) and unreachable (with why).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Hosts that answered, and whose answer `ok` accepted.
    pub ok: Vec<String>,
    /// Hosts whose call failed, or whose answer `ok` refused (for `check`, a command that did not
    /// exit 0), with why.
    pub failed: Vec<(String, String)>,
    /// Hosts that could not be reached, with why.
    pub unreachable: Vec<(String, String)>,
}

impl Summary {
    /// Sort `answers`; `ok` says whether an answer counts as a success, or why it does not.
    pub fn new<T>(answers: &[Answer<T>], ok: impl Fn(&T) -> Result<(), String>) -> Summary {
        let mut s = Summary::default();
        for a in answers {
            let host = a.host.clone();
            match &a.outcome {
                Outcome::Done(v) => match ok(v) {
                    Ok(()) => s.ok.push(host),
                    Err(why) => s.failed.push((host, why)),
                },
                Outcome::Failed(why) => s.failed.push((host, why.clone())),
                Outcome::Unreachable(why) => s.unreachable.push((host, why.clone())),
            }
        }
        s.ok.sort();
        s.failed.sort();
        s.unreachable.sort();
        s
    }

    /// Sort the answers of [`Fleet::check`]: a command that did not exit 0 failed, saying how it
    /// ended and the last line it printed on stderr.
    pub fn of_checks(answers: &[Answer<Output>]) -> Summary {
        Summary::new(answers, |out| match (out.exit.success(), out.stderr.last()) {
            (true, _) => Ok(()),
            (false, Some(last)) => Err(format!("{}: {last}", out.exit)),
            (false, None) => Err(out.exit.to_string()),
        })
    }

    /// True when every host answered and every answer was accepted.
    pub fn all_ok(&self) -> bool {
        self.failed.is_empty() && self.unreachable.is_empty()
    }
}

/// Contexts on many hosts. Cheap to clone; clones are handles to the same fleet (its actor and
/// its members).
#[derive(Clone)]
pub struct Fleet {
    rt: Runtime,
    fanout: usize,
    /// One gate for every start of the fleet, direct or through a gateway: the fan-out is split
    /// across gateways, not multiplied by them.
    gate: Arc<Semaphore>,
    connect_timeout: Duration,
    command_timeout: Option<Duration>,
    reroute: bool,
    /// The actor that owns the members.
    keeper: Addr<Keeper>,
    /// The members as the actor last published them: read without waiting on it.
    view: watch::Receiver<BTreeMap<String, Member>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("fanout", &self.fanout)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("reroute", &self.reroute)
            .field("hosts", &self.view.borrow().len())
            .finish()
    }
}

/// One host as the fleet shows it.
#[derive(Clone, Debug)]
enum Member {
    /// Up, and the gateway it was started through.
    Up(Context, Option<String>),
    /// Not up (it could not be started, it was lost, it is being started again), and why.
    Down(String),
}

impl Fleet {
    /// An empty fleet whose contexts `rt` starts (its actor runs on `rt`'s actor thread).
    pub fn new(rt: &Runtime) -> Fleet {
        let (tx, view) = watch::channel(BTreeMap::new());
        let keeper =
            Keeper { slots: BTreeMap::new(), view: tx, gateways: HashMap::new(), io: rt.inner.io.clone(), tokens: 0 };
        let keeper = Keeper::start_in_arbiter(&rt.inner.arbiter, move |_| keeper);
        Fleet {
            rt: rt.clone(),
            fanout: DEFAULT_FANOUT,
            gate: Arc::new(Semaphore::new(DEFAULT_FANOUT)),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: None,
            reroute: false,
            keeper,
            view,
        }
    }

    /// Run at most `n` starts at once (at least one).
    pub fn with_fanout(mut self, n: usize) -> Self {
        self.fanout = n.max(1);
        self.gate = Arc::new(Semaphore::new(self.fanout));
        self
    }

    /// Give each host this long to start (connection, handshake, upload).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Give each call this long to answer (the runtime's call timeout, by default).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// When a gateway is lost (its link closed, not shut down), start the hosts that were up or
    /// starting through it again, through another gateway of the same [`Fleet::start_through`]
    /// that is up (off by default: they are down, naming it). The new contexts replace the old
    /// ones; each re-route is logged as a warning naming the host and both gateways. With no
    /// gateway of the assignment left, they are down, naming the one that was lost. Calls in
    /// flight to them when the gateway went fail, naming it, and are not made again (a command
    /// might have run). It applies to the hosts started after it is set.
    pub fn with_reroute(mut self, reroute: bool) -> Self {
        self.reroute = reroute;
        self
    }

    /// How many starts run at once.
    pub fn fanout(&self) -> usize {
        self.fanout
    }

    /// Start a context on each host (a name, and the method that reaches it), at most
    /// [`Fleet::fanout`] at once. A host already up is not started again. The open-files limit
    /// is raised as far as it may be first; a fleet larger than it allows is said so (a warning),
    /// and the hosts past it fail as the system refuses them.
    pub fn start<N, I>(&self, hosts: I) -> Answers<()>
    where
        N: Into<String>,
        I: IntoIterator<Item = (N, Box<dyn Method>)>,
    {
        let hosts: Vec<(String, Box<dyn Method>)> = hosts.into_iter().map(|(n, m)| (n.into(), m)).collect();
        let limit = hypha_bootstrap::raise_open_files();
        let wanted = (self.up().len() + hosts.len()) as u64 * FDS_PER_CONTEXT;
        if limit < wanted + 64 {
            tracing::warn!(limit, hosts = hosts.len(), "the open-files limit is too low for a fleet this large");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for (name, method) in hosts {
            if self.get(&name).is_some() {
                let _ = tx.send(Answer { host: name, outcome: Outcome::Done(()) });
                continue;
            }
            let start = self.rt.start(method).name(name.clone()).timeout(self.connect_timeout);
            let start = std::future::IntoFuture::into_future(start);
            let (fleet, tx) = (self.clone(), tx.clone());
            tasks.spawn(async move {
                let started = {
                    let _turn = fleet.gate.clone().acquire_owned().await;
                    start.await
                };
                let outcome = match started {
                    Ok(ctx) => {
                        fleet
                            .joined(Joined {
                                host: name.clone(),
                                ctx,
                                gateway: None,
                                route: None,
                                token: None,
                                ack: None,
                            })
                            .await;
                        Outcome::Done(())
                    }
                    Err(e) => {
                        fleet.refused(Refused { host: name.clone(), why: e.to_string(), token: None, ack: None }).await;
                        Outcome::Unreachable(e.to_string())
                    }
                };
                let _ = tx.send(Answer { host: name, outcome });
            });
        }
        Answers { rx, _tasks: tasks }
    }

    /// Start a context on each host *through* `gateway` (ClusterShell's tree mode, Mitogen's
    /// `via=`): the gateway connects to them from its own host and serves them the agent; calls
    /// route through it. Its starts share the fleet's fan-out with every other start. If the
    /// gateway is lost, its hosts (and only they) are down, naming it.
    /// [`Fleet::start_through`] with one gateway.
    pub fn start_via<N, M, I>(&self, gateway: &Context, hosts: I) -> Answers<()>
    where
        N: Into<String>,
        M: Portable,
        I: IntoIterator<Item = (N, M)>,
    {
        self.start_through(std::slice::from_ref(gateway), hosts)
    }

    /// Start a context on each host through one of `gateways`, dealt round-robin (the first host
    /// to the first gateway that is up, the second to the next, ...): each gateway connects to
    /// its share from its own host and serves them the agent, and all of them share the fleet's
    /// one fan-out (clustershell#324: split, not copied to each). A gateway that is lost fails
    /// only its own hosts, naming it; with [`Fleet::with_reroute`], they are started again
    /// through the gateways left. With no gateway, every host answers unreachable.
    pub fn start_through<N, M, I>(&self, gateways: &[Context], hosts: I) -> Answers<()>
    where
        N: Into<String>,
        M: Portable,
        I: IntoIterator<Item = (N, M)>,
    {
        let up: Vec<Context> = gateways.iter().filter(|g| !g.state().is_terminal()).cloned().collect();
        // None up: each host tries the gateway it was dealt, and says why it could not.
        let deal = if up.is_empty() { gateways.to_vec() } else { up };
        let assignment =
            Arc::new(Assignment { gateways: gateways.to_vec(), reroute: self.reroute, gate: self.gate.clone() });
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for (index, (name, method)) in hosts.into_iter().enumerate() {
            let name = name.into();
            if deal.is_empty() {
                let outcome = Outcome::Unreachable("no gateway to start it through".into());
                let _ = tx.send(Answer { host: name, outcome });
                continue;
            }
            if self.get(&name).is_some() {
                let _ = tx.send(Answer { host: name, outcome: Outcome::Done(()) });
                continue;
            }
            let start = self.through(name.clone(), method);
            let route = Arc::new(Route { start, index, assignment: assignment.clone() });
            let (fleet, tx, first) = (self.clone(), tx.clone(), deal[index % deal.len()].clone());
            tasks.spawn(async move {
                let outcome = match start_routed(&route, &name, first, Vec::new()).await {
                    Ok((ctx, gateway)) => {
                        let route = Some(route);
                        let gateway = Some(gateway);
                        fleet.joined(Joined { host: name.clone(), ctx, gateway, route, token: None, ack: None }).await;
                        Outcome::Done(())
                    }
                    Err(why) => {
                        fleet.refused(Refused { host: name.clone(), why: why.clone(), token: None, ack: None }).await;
                        Outcome::Unreachable(why)
                    }
                };
                let _ = tx.send(Answer { host: name, outcome });
            });
        }
        Answers { rx, _tasks: tasks }
    }

    /// How to start host `name` with `method` through a gateway. It holds the runtime weakly:
    /// the fleet's actor keeps it, and must not keep the runtime (and its actor thread) alive.
    fn through<M: Portable>(&self, name: String, method: M) -> StartThrough {
        let (rt, timeout) = (Arc::downgrade(&self.rt.inner), self.connect_timeout);
        Box::new(move |gateway: &Context| {
            let Some(inner) = Weak::upgrade(&rt) else {
                let why = BootError::start(name.clone(), "the runtime has stopped", None);
                return Box::pin(std::future::ready(Err(why))) as BoxStart;
            };
            let start = Runtime { inner }.start(method.clone()).via(gateway).name(name.clone()).timeout(timeout);
            std::future::IntoFuture::into_future(start)
        })
    }

    /// Tell the actor that `msg.host` is up, and wait until it is shown (so that whoever hears
    /// of the start next finds it in [`Fleet::get`]). The message is delivered even if this
    /// future is dropped: the context is never left with nobody holding it.
    async fn joined(&self, mut msg: Joined) {
        let (ack, acked) = oneshot::channel();
        msg.ack = Some(ack);
        self.keeper.do_send(msg);
        let _ = acked.await;
    }

    /// Tell the actor that `msg.host` could not be started, and wait until it is shown.
    async fn refused(&self, mut msg: Refused) {
        let (ack, acked) = oneshot::channel();
        msg.ack = Some(ack);
        self.keeper.do_send(msg);
        let _ = acked.await;
    }

    /// Call `req` on every host that is up (encoded once, all at once); hosts that are down
    /// answer as unreachable, with why.
    pub fn call<R: Request>(&self, req: &R) -> Answers<R::Response> {
        let (tx, rx) = mpsc::unbounded_channel();
        let encoded = match EncodedRequest::new(req) {
            Ok(e) => e,
            Err(e) => {
                for host in self.names() {
                    let _ = tx.send(Answer { host, outcome: Outcome::Failed(e.to_string()) });
                }
                return Answers { rx, _tasks: tokio::task::JoinSet::new() };
            }
        };
        let within = self.command_timeout;
        let tasks = self.each(tx, move |ctx| {
            let encoded = encoded.clone();
            async move {
                let call = ctx.call_encoded(&encoded);
                match within {
                    Some(after) => tokio::time::timeout(after, call).await.unwrap_or(Err(CallError::Timeout {
                        context: ctx.id(),
                        handler: R::NAME,
                        after,
                    })),
                    None => call.await,
                }
            }
        });
        Answers { rx, _tasks: tasks }
    }

    /// Run `cmd` on every host that is up (remoto's `process.check` on each): each answer is the
    /// command's output and exit, whatever the exit (see [`Summary::new`] to sort them).
    pub fn check(&self, cmd: Command) -> Answers<Output> {
        let (tx, rx) = mpsc::unbounded_channel();
        let cmd = match self.command_timeout {
            Some(t) if cmd.timeout.is_none() => cmd.with_timeout(t),
            _ => cmd,
        };
        let tasks = self.each(tx, move |ctx| {
            let cmd = cmd.clone();
            async move { ctx.check(cmd).await }
        });
        Answers { rx, _tasks: tasks }
    }

    /// Run `f` on each context that is up, all at once; the others answer as unreachable. A
    /// call that fails because its context (or the gateway on the way) was lost is unreachable,
    /// naming the gateway; it is not made again.
    fn each<T, F, Fut>(&self, tx: mpsc::UnboundedSender<Answer<T>>, f: F) -> tokio::task::JoinSet<()>
    where
        T: Send + 'static,
        F: Fn(Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let members: Vec<(String, Member)> = self.view.borrow().iter().map(|(n, m)| (n.clone(), m.clone())).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (host, member) in members {
            match member {
                Member::Up(ctx, via) => {
                    let (tx, call) = (tx.clone(), f(ctx.clone()));
                    tasks.spawn(async move {
                        let outcome = match call.await {
                            Ok(v) => Outcome::Done(v),
                            Err(e) if lost(&e) || ctx.state().is_terminal() => match via {
                                Some(gw) => Outcome::Unreachable(format!("{e} (through gateway {gw})")),
                                None => Outcome::Unreachable(e.to_string()),
                            },
                            Err(e) => Outcome::Failed(e.to_string()),
                        };
                        let _ = tx.send(Answer { host, outcome });
                    });
                }
                Member::Down(why) => {
                    let _ = tx.send(Answer { host, outcome: Outcome::Unreachable(why) });
                }
            }
        }
        tasks
    }

    /// The context of `host`, if it is up (a context whose link just ended is not, even before
    /// the fleet's actor has marked it down).
    pub fn get(&self, host: &str) -> Option<Context> {
        match self.view.borrow().get(host)? {
            Member::Up(ctx, _) if !ctx.state().is_terminal() => Some(ctx.clone()),
            _ => None,
        }
    }

    /// The gateway `host`'s context runs through, if it is up through one.
    pub fn via(&self, host: &str) -> Option<String> {
        match self.view.borrow().get(host)? {
            Member::Up(_, via) => via.clone(),
            Member::Down(_) => None,
        }
    }

    /// Every host of the fleet, sorted.
    pub fn names(&self) -> Vec<String> {
        self.view.borrow().keys().cloned().collect()
    }

    /// The contexts that are up, by host.
    pub fn up(&self) -> Vec<(String, Context)> {
        let view = self.view.borrow();
        view.iter()
            .filter_map(|(n, m)| match m {
                Member::Up(ctx, _) if !ctx.state().is_terminal() => Some((n.clone(), ctx.clone())),
                _ => None,
            })
            .collect()
    }

    /// The hosts as the fleet sees them now, without a call: those up as ok, the others (never
    /// started, lost, being started again through another gateway) as unreachable, with why.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for (host, member) in self.view.borrow().iter() {
            match member {
                Member::Up(..) => s.ok.push(host.clone()),
                Member::Down(why) => s.unreachable.push((host.clone(), why.clone())),
            }
        }
        s
    }

    /// Wait until `cond` holds, looking at the fleet now and after each change of its members
    /// (a start answered, a context lost, a re-route), for at most `within`. Whether it held.
    pub async fn wait_until(&self, within: Duration, mut cond: impl FnMut(&Fleet) -> bool) -> bool {
        let deadline = Instant::now() + within;
        let mut changes = self.view.clone();
        loop {
            drop(changes.borrow_and_update());
            if cond(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // The deadline, or the actor is gone (nothing changes any more).
                Ok(Err(_)) | Err(_) => return cond(self),
            }
        }
    }

    /// Shut every context of the fleet down, all at once (re-routes under way stop first).
    pub async fn shutdown(&self) {
        let up = match self.keeper.send(Clear).await {
            Ok(up) => up,
            // The actor has stopped with its runtime: what it showed last.
            Err(_) => self.up().into_iter().map(|(_, ctx)| ctx).collect(),
        };
        let mut waits = tokio::task::JoinSet::new();
        for ctx in up {
            waits.spawn(async move { ctx.shutdown().await });
        }
        while waits.join_next().await.is_some() {}
    }
}

/// True when a call failed because its context could not be reached any more (its link or a
/// hop on the way was lost), not because of what it did there.
fn lost(e: &CallError) -> bool {
    match e {
        CallError::Disconnected { .. } | CallError::NoRoute(_) => true,
        CallError::Remote(r) => r.kind == RemoteErrorKind::NoRoute,
        _ => false,
    }
}

/// Starts one host through the gateway given (its method, name and connect timeout bound in).
type StartThrough = Box<dyn Fn(&Context) -> BoxStart + Send + Sync>;

/// How a host behind a gateway is started: kept with it, for re-routing.
struct Route {
    start: StartThrough,
    /// Its place in its assignment: re-routed hosts are dealt over the gateways left as the
    /// first deal was.
    index: usize,
    assignment: Arc<Assignment>,
}

/// The gateways one [`Fleet::start_through`] dealt its hosts over.
struct Assignment {
    gateways: Vec<Context>,
    reroute: bool,
    gate: Arc<Semaphore>,
}

impl Route {
    /// The gateway this host goes through next: one of the assignment's that is up and not
    /// among `lost`, dealt by the host's place.
    fn next_gateway(&self, lost: &[ContextId]) -> Option<Context> {
        let up: Vec<&Context> =
            self.assignment.gateways.iter().filter(|g| !g.state().is_terminal() && !lost.contains(&g.id())).collect();
        (!up.is_empty()).then(|| up[self.index % up.len()].clone())
    }
}

/// Start `host` through `gateway`, under the fleet's fan-out; if that gateway is lost meanwhile
/// and re-routing was asked for, through the next one up (each such move a warning). The context
/// and the gateway it runs through, or why not (naming the gateway).
async fn start_routed(
    route: &Route,
    host: &str,
    mut gateway: Context,
    mut lost: Vec<ContextId>,
) -> Result<(Context, Context), String> {
    loop {
        let started = {
            let _turn = route.assignment.gate.clone().acquire_owned().await;
            (route.start)(&gateway).await
        };
        let e = match started {
            Ok(ctx) => return Ok((ctx, gateway)),
            Err(e) => e,
        };
        let why = format!("{e} (through gateway {})", gateway.name());
        if !route.assignment.reroute || !gateway_lost(&gateway, &e).await {
            return Err(why);
        }
        lost.push(gateway.id());
        let Some(next) = route.next_gateway(&lost) else {
            return Err(format!("{why}; no other gateway of its assignment is up"));
        };
        warn!(
            host,
            from = gateway.name(),
            to = next.name(),
            "gateway lost while the host started: starting it through another"
        );
        gateway = next;
    }
}

/// True if `gateway` was lost (its link closed without a shutdown): already so, or `failed`
/// says the link to it went, and its actor says so within moments.
async fn gateway_lost(gateway: &Context, failed: &BootError) -> bool {
    let cut = match failed {
        BootError::Via { source, .. } => match &**source {
            CallError::Disconnected { context, .. } | CallError::NoRoute(context) => *context == gateway.id(),
            _ => false,
        },
        _ => false,
    };
    let state = match gateway.state() {
        state if state.is_terminal() || !cut => state,
        _ => tokio::time::timeout(GATEWAY_NOTICE, gateway.closed()).await.unwrap_or_else(|_| gateway.state()),
    };
    matches!(state, State::Disconnected { .. })
}

/// Why a context ended, for the member it was.
fn ended(state: &State) -> String {
    match state {
        State::Disconnected { reason, .. } => format!("lost: {reason}"),
        State::ShutDown { .. } => "shut down".into(),
        State::Failed(why) => format!("failed: {why}"),
        other => format!("{other:?}"),
    }
}

/// The fleet's actor: it owns the members, watches their contexts and gateways, and re-routes.
struct Keeper {
    slots: BTreeMap<String, Slot>,
    /// The members as the handles see them; every change to a slot's member is published here.
    view: watch::Sender<BTreeMap<String, Member>>,
    /// Gateways watched, by id.
    gateways: HashMap<ContextId, SpawnHandle>,
    /// Where re-routes run (they connect: the program's tokio runtime, not the actor thread).
    io: tokio::runtime::Handle,
    /// Numbers re-routes, so that the answer of one overtaken by another start is dropped.
    tokens: u64,
}

struct Slot {
    member: Member,
    gateway: Option<Context>,
    route: Option<Arc<Route>>,
    /// The watch on its context, while it is up.
    watch: Option<SpawnHandle>,
    /// Lost while its gateway still looked up: re-routed if the gateway turns out lost too.
    orphan: bool,
    /// A re-route under way: its token and task.
    rerouting: Option<(u64, tokio::task::AbortHandle)>,
}

impl Actor for Keeper {
    type Context = actix::Context<Self>;
}

/// A host's context is up: it becomes (or replaces) the member.
struct Joined {
    host: String,
    ctx: Context,
    gateway: Option<Context>,
    route: Option<Arc<Route>>,
    /// Set by a re-route: the answer counts only if that re-route is still the host's.
    token: Option<u64>,
    ack: Option<oneshot::Sender<()>>,
}

impl Message for Joined {
    type Result = ();
}

/// A host could not be started.
struct Refused {
    host: String,
    why: String,
    token: Option<u64>,
    ack: Option<oneshot::Sender<()>>,
}

impl Message for Refused {
    type Result = ();
}

/// Forget every member (for a shutdown): the contexts that were up.
struct Clear;

impl Message for Clear {
    type Result = Vec<Context>;
}

impl Keeper {
    fn set(&mut self, host: &str, member: Member) {
        if let Some(slot) = self.slots.get_mut(host) {
            slot.member = member.clone();
        }
        self.view.send_modify(|view| {
            view.insert(host.to_owned(), member);
        });
    }

    /// Whether an answer with `token` is still wanted: a caller's start always is, a re-route's
    /// while it is the host's re-route.
    fn current(&self, host: &str, token: Option<u64>) -> bool {
        match token {
            None => true,
            Some(t) => self.slots.get(host).and_then(|s| s.rerouting.as_ref()).is_some_and(|(r, _)| *r == t),
        }
    }

    /// Stop watching and re-routing `slot`, whose member is replaced by `by`; its context, if it
    /// is another one that still runs, is shut down (nobody would hold it).
    fn retire(&self, slot: Slot, by: Option<ContextId>, ctx: &mut actix::Context<Self>) {
        if let Some(watch) = slot.watch {
            ctx.cancel_future(watch);
        }
        if let Some((_, task)) = slot.rerouting {
            task.abort();
        }
        if let Member::Up(old, _) = slot.member {
            if Some(old.id()) != by && !old.state().is_terminal() {
                self.io.spawn(async move { old.shutdown().await });
            }
        }
    }

    /// Watch `gateway` (once): when it ends, its hosts are down or re-routed at once.
    fn watch_gateway(&mut self, gateway: &Context, ctx: &mut actix::Context<Self>) {
        if self.gateways.contains_key(&gateway.id()) || gateway.state().is_terminal() {
            return;
        }
        let gw = gateway.clone();
        let watch = ctx.spawn(
            actix::fut::wrap_future(async move {
                let state = gw.closed().await;
                (gw, state)
            })
            .map(|(gw, state), act: &mut Self, ctx| act.gateway_ended(&gw, &state, ctx)),
        );
        self.gateways.insert(gateway.id(), watch);
    }

    /// `host`'s context `id` ended.
    fn member_ended(&mut self, host: &str, id: ContextId, state: &State, ctx: &mut actix::Context<Self>) {
        let Some(slot) = self.slots.get_mut(host) else { return };
        if !matches!(&slot.member, Member::Up(c, _) if c.id() == id) {
            return;
        }
        slot.watch = None;
        let why = ended(state);
        let Some(gateway) = slot.gateway.clone() else {
            tracing::info!(host, why, "fleet member down");
            return self.set(host, Member::Down(why));
        };
        let why = format!("{why} (through gateway {})", gateway.name());
        let reroute = slot.route.as_ref().is_some_and(|r| r.assignment.reroute);
        let lost = matches!(state, State::Disconnected { .. });
        match gateway.state() {
            State::Disconnected { reason, .. } if reroute && lost => {
                let why = format!("lost with its gateway: {reason}");
                self.reroute(host, &gateway, why, ctx);
            }
            gw if reroute && lost && !gw.is_terminal() => {
                // Its gateway may be going too (the two are told apart by their own actors):
                // that gateway's end decides.
                slot.orphan = true;
                tracing::info!(host, why, "fleet member down");
                self.set(host, Member::Down(why));
            }
            _ => {
                tracing::info!(host, why, "fleet member down");
                self.set(host, Member::Down(why));
            }
        }
    }

    /// `gateway` ended: its hosts that were up (or lost just before it) are down, naming it, or
    /// re-routed if it was lost and they asked for it.
    fn gateway_ended(&mut self, gateway: &Context, state: &State, ctx: &mut actix::Context<Self>) {
        self.gateways.remove(&gateway.id());
        let hosts: Vec<(String, bool)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.gateway.as_ref().is_some_and(|g| g.id() == gateway.id()))
            .filter(|(_, s)| matches!(s.member, Member::Up(..)) || s.orphan)
            .map(|(host, s)| (host.clone(), s.route.as_ref().is_some_and(|r| r.assignment.reroute)))
            .collect();
        let name = gateway.name();
        let why = match state {
            State::Disconnected { reason, .. } => format!("lost with its gateway: {reason}"),
            other => format!("its gateway ended ({})", ended(other)),
        };
        for (host, reroute) in hosts {
            if let Some(slot) = self.slots.get_mut(&host) {
                slot.orphan = false;
                if let Some(watch) = slot.watch.take() {
                    ctx.cancel_future(watch);
                }
            }
            if reroute && matches!(state, State::Disconnected { .. }) {
                self.reroute(&host, gateway, why.clone(), ctx);
            } else {
                let why = format!("{why} (through gateway {name})");
                tracing::info!(host, why, "fleet member down");
                self.set(&host, Member::Down(why));
            }
        }
    }

    /// Start `host`, lost with gateway `dead` (`why`), again through another gateway of its
    /// assignment; down, naming `dead`, if none is up.
    fn reroute(&mut self, host: &str, dead: &Context, why: String, ctx: &mut actix::Context<Self>) {
        let Some(route) = self.slots.get(host).and_then(|s| s.route.clone()) else { return };
        let Some(next) = route.next_gateway(&[dead.id()]) else {
            let why = format!("{why} (through gateway {}); no other gateway of its assignment is up", dead.name());
            warn!(host, gateway = dead.name(), "gateway lost, and no other gateway is up: the host is down");
            return self.set(host, Member::Down(why));
        };
        warn!(host, from = dead.name(), to = next.name(), "gateway lost: starting the host again through another");
        self.tokens += 1;
        let token = self.tokens;
        let (addr, name, dead_id) = (ctx.address(), host.to_owned(), dead.id());
        let task = {
            let (route, why, next) = (route.clone(), why.clone(), next.clone());
            self.io.spawn(async move {
                match start_routed(&route, &name, next, vec![dead_id]).await {
                    Ok((ctx, gateway)) => addr.do_send(Joined {
                        host: name,
                        ctx,
                        gateway: Some(gateway),
                        route: Some(route),
                        token: Some(token),
                        ack: None,
                    }),
                    Err(e) => {
                        let why = format!("{why}; started again: {e}");
                        addr.do_send(Refused { host: name, why, token: Some(token), ack: None })
                    }
                }
            })
        };
        if let Some(slot) = self.slots.get_mut(host) {
            if let Some((_, old)) = slot.rerouting.replace((token, task.abort_handle())) {
                old.abort();
            }
        }
        let why = format!("{why} (through gateway {}); starting again through {}", dead.name(), next.name());
        self.set(host, Member::Down(why));
    }
}

impl Handler<Joined> for Keeper {
    type Result = ();

    fn handle(&mut self, msg: Joined, ctx: &mut actix::Context<Self>) {
        let Joined { host, ctx: member, gateway, route, token, ack } = msg;
        if !self.current(&host, token) {
            // A re-route overtaken by another start of the host (or a shutdown): nobody wants it.
            self.io.spawn(async move { member.shutdown().await });
            return;
        }
        if let Some(old) = self.slots.remove(&host) {
            self.retire(old, Some(member.id()), ctx);
        }
        let (watched, id, name) = (member.clone(), member.id(), host.clone());
        let watch = ctx.spawn(
            actix::fut::wrap_future(async move { watched.closed().await })
                .map(move |state, act: &mut Self, ctx| act.member_ended(&name, id, &state, ctx)),
        );
        if let Some(gateway) = &gateway {
            self.watch_gateway(gateway, ctx);
        }
        let via = gateway.as_ref().map(|g| g.name().to_owned());
        let member = Member::Up(member, via);
        let slot = Slot { member: member.clone(), gateway, route, watch: Some(watch), orphan: false, rerouting: None };
        self.slots.insert(host.clone(), slot);
        self.set(&host, member);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

impl Handler<Refused> for Keeper {
    type Result = ();

    fn handle(&mut self, msg: Refused, ctx: &mut actix::Context<Self>) {
        let Refused { host, why, token, ack } = msg;
        // A context that is up stays the member: a start of the caller's that raced it failed.
        let up =
            matches!(self.slots.get(&host), Some(Slot { member: Member::Up(c, _), .. }) if !c.state().is_terminal());
        if self.current(&host, token) && !up {
            if let Some(old) = self.slots.remove(&host) {
                self.retire(old, None, ctx);
            }
            let member = Member::Down(why);
            let slot = Slot {
                member: member.clone(),
                gateway: None,
                route: None,
                watch: None,
                orphan: false,
                rerouting: None,
            };
            self.slots.insert(host.clone(), slot);
            self.set(&host, member);
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

impl Handler<Clear> for Keeper {
    type Result = MessageResult<Clear>;

    fn handle(&mut self, _: Clear, ctx: &mut actix::Context<Self>) -> Self::Result {
        let mut up = Vec::new();
        for (_, slot) in std::mem::take(&mut self.slots) {
            if let Some(watch) = slot.watch {
                ctx.cancel_future(watch);
            }
            if let Some((_, task)) = slot.rerouting {
                task.abort();
            }
            if let Member::Up(c, _) = slot.member {
                up.push(c);
            }
        }
        for (_, watch) in self.gateways.drain() {
            ctx.cancel_future(watch);
        }
        self.view.send_replace(BTreeMap::new());
        MessageResult(up)
    }
}
