//! A fleet: contexts on many hosts, started with a bounded fan-out and driven as one.
//!
//! [`Fleet::start`] starts a context on each host with at most [`Fleet::fanout`] starts (the
//! connection, the handshake, an upload) in flight at once, each bounded by the connect timeout;
//! the answers come as each host answers ([`Answers::next`]), and a [`Summary`] sorts them into
//! ok, failed and unreachable, by host, with reasons. The contexts stay up: a later
//! [`Fleet::call`] or [`Fleet::check`] costs one message per host. Each context is supervised by
//! its own actor, as any context is; the fleet keeps their handles and the hosts that failed.
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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hypha_bootstrap::process::{Command, Output};
use hypha_bootstrap::{BootError, Method, Portable};
use hypha_runtime::{EncodedRequest, Request};
use tokio::sync::{mpsc, Semaphore};

use crate::{Context, Runtime};

/// How many starts a fleet runs at once unless told otherwise (as `clush`).
pub const DEFAULT_FANOUT: usize = 64;
/// How long a host may take to start unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors a context costs its controller, at most (a socket or pipes, and their
/// stderr): what the open-files limit is measured against.
const FDS_PER_CONTEXT: u64 = 4;

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

/// Contexts on many hosts. Cheap to clone; clones share the contexts.
#[derive(Clone, Debug)]
pub struct Fleet {
    rt: Runtime,
    fanout: usize,
    /// One gate for every start of the fleet, direct or through a gateway: the fan-out is split
    /// across gateways, not multiplied by them.
    gate: Arc<Semaphore>,
    connect_timeout: Duration,
    command_timeout: Option<Duration>,
    hosts: Arc<Mutex<BTreeMap<String, Member>>>,
}

#[derive(Clone, Debug)]
enum Member {
    /// Up, and the gateway it was started through.
    Up(Context, Option<String>),
    Down(String),
}

impl Fleet {
    /// An empty fleet whose contexts `rt` starts.
    pub fn new(rt: &Runtime) -> Fleet {
        Fleet {
            rt: rt.clone(),
            fanout: DEFAULT_FANOUT,
            gate: Arc::new(Semaphore::new(DEFAULT_FANOUT)),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: None,
            hosts: Arc::default(),
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
        let starts = hosts.into_iter().map(|(name, method)| {
            let name = name.into();
            let start = self.rt.start(method).name(name.clone()).timeout(self.connect_timeout);
            (name, std::future::IntoFuture::into_future(start))
        });
        self.launch(starts.collect(), None)
    }

    /// Start a context on each host *through* `gateway` (ClusterShell's tree mode, Mitogen's
    /// `via=`): the gateway connects to them from its own host and serves them the agent; calls
    /// route through it. Its starts share the fleet's fan-out with every other start. If the
    /// gateway is lost, its hosts (and only they) answer as unreachable, naming it.
    pub fn start_via<N, M, I>(&self, gateway: &Context, hosts: I) -> Answers<()>
    where
        N: Into<String>,
        M: Portable,
        I: IntoIterator<Item = (N, M)>,
    {
        let starts = hosts.into_iter().map(|(name, method)| {
            let name = name.into();
            let start = self.rt.start(method).via(gateway).name(name.clone()).timeout(self.connect_timeout);
            (name, std::future::IntoFuture::into_future(start))
        });
        self.launch(starts.collect(), Some(gateway.name().to_owned()))
    }

    fn launch(&self, starts: Vec<(String, BoxStart)>, via: Option<String>) -> Answers<()> {
        let limit = raise_open_files();
        let wanted = (self.up().len() + starts.len()) as u64 * FDS_PER_CONTEXT;
        if via.is_none() && limit < wanted + 64 {
            tracing::warn!(limit, hosts = starts.len(), "the open-files limit is too low for a fleet this large");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for (name, start) in starts {
            if matches!(self.member(&name), Some(Member::Up(..))) {
                let _ = tx.send(Answer { host: name, outcome: Outcome::Done(()) });
                continue;
            }
            let (fleet, tx, via) = (self.clone(), tx.clone(), via.clone());
            tasks.spawn(async move {
                let outcome = {
                    let _turn = fleet.gate.clone().acquire_owned().await;
                    start.await
                };
                let (member, outcome) = match outcome {
                    Ok(ctx) => (Member::Up(ctx, via), Outcome::Done(())),
                    Err(e) => {
                        let why = match &via {
                            Some(gw) => format!("{e} (through gateway {gw})"),
                            None => e.to_string(),
                        };
                        (Member::Down(why.clone()), Outcome::Unreachable(why))
                    }
                };
                fleet.hosts.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), member);
                let _ = tx.send(Answer { host: name, outcome });
            });
        }
        Answers { rx, _tasks: tasks }
    }

    /// Call `req` on every host that is up (encoded once, all at once); hosts that could not be
    /// started answer as unreachable, with why.
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
                let answer = match within {
                    Some(t) => tokio::time::timeout(t, call).await.map_err(|_| format!("no answer within {t:?}"))?,
                    None => call.await,
                };
                answer.map_err(|e| e.to_string())
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
            async move { ctx.check(cmd).await.map_err(|e| e.to_string()) }
        });
        Answers { rx, _tasks: tasks }
    }

    /// Run `f` on each context that is up, all at once; the others answer as unreachable.
    fn each<T, F, Fut>(&self, tx: mpsc::UnboundedSender<Answer<T>>, f: F) -> tokio::task::JoinSet<()>
    where
        T: Send + 'static,
        F: Fn(Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    {
        let members: Vec<(String, Member)> =
            self.hosts.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, m)| (n.clone(), m.clone())).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (host, member) in members {
            match member {
                Member::Up(ctx, via) => {
                    let (tx, call, lost) = (tx.clone(), f(ctx.clone()), ctx);
                    tasks.spawn(async move {
                        let outcome = match (call.await, via) {
                            (Ok(v), _) => Outcome::Done(v),
                            (Err(why), Some(gw)) if lost.state().is_terminal() => {
                                Outcome::Unreachable(format!("{why} (through gateway {gw})"))
                            }
                            (Err(why), None) if lost.state().is_terminal() => Outcome::Unreachable(why),
                            (Err(why), _) => Outcome::Failed(why),
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

    fn member(&self, name: &str) -> Option<Member> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// The context of `host`, if it is up.
    pub fn get(&self, host: &str) -> Option<Context> {
        match self.member(host)? {
            Member::Up(ctx, _) => Some(ctx),
            Member::Down(_) => None,
        }
    }

    /// Every host of the fleet, sorted.
    pub fn names(&self) -> Vec<String> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// The contexts that are up, by host.
    pub fn up(&self) -> Vec<(String, Context)> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts
            .iter()
            .filter_map(|(n, m)| match m {
                Member::Up(ctx, _) => Some((n.clone(), ctx.clone())),
                Member::Down(_) => None,
            })
            .collect()
    }

    /// Shut every context of the fleet down, all at once.
    pub async fn shutdown(&self) {
        let up = self.up();
        let mut waits = tokio::task::JoinSet::new();
        for (_, ctx) in up {
            waits.spawn(async move { ctx.shutdown().await });
        }
        while waits.join_next().await.is_some() {}
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Raise this process's open-files limit to its hard limit, once; the soft limit it has now.
fn raise_open_files() -> u64 {
    static RAISED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RAISED.get_or_init(|| {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit read and write the one struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 1024;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    tracing::debug!(from = lim.rlim_cur, to = lim.rlim_max, "raised the open-files limit");
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        lim.rlim_cur
    })
}
