//! `Start`: the one way to start a context, from the controller (`rt.start(method)`) and from
//! handler code (`cx.start(method)`), awaited for a [`Context`].

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hypha_bootstrap::builds::Offer;
use hypha_bootstrap::{BootError, ChildInit, Method, Portable, Spawned};
use hypha_runtime::{ContextId, Router};

use crate::{Context, Runtime, StartError};

/// What a context does when its link is lost (its agent died, its host or a hop went away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restart {
    /// Stay lost: calls fail, and the context ends (the default).
    #[default]
    Never,
    /// Start again through the same method and path, up to `max_tries` times in a row, the first
    /// after `backoff`, each further one after twice as long as the one before (at most a minute).
    /// The [`Context`] handle stays valid; calls made meanwhile wait for the new agent, within
    /// their timeout. A start that succeeds resets the count.
    OnLoss {
        /// Pause before the first try.
        backoff: Duration,
        /// Tries in a row before the context fails for good.
        max_tries: u32,
    },
}

impl Restart {
    /// [`Restart::OnLoss`] with the defaults: 100 ms before the first try, 5 tries.
    pub fn on_loss() -> Self {
        Restart::OnLoss { backoff: Duration::from_millis(100), max_tries: 5 }
    }

    /// The pause before try `attempt` (1, 2, ...), or `None` when there is to be no such try.
    pub(crate) fn pause(&self, attempt: u32) -> Option<Duration> {
        match *self {
            Restart::Never => None,
            Restart::OnLoss { max_tries, .. } if attempt > max_tries => None,
            Restart::OnLoss { backoff, .. } => {
                let doubled = backoff.saturating_mul(1 << attempt.saturating_sub(1).min(16));
                Some(doubled.min(Duration::from_secs(60)))
            }
        }
    }
}

/// How a context is (re)started: by this process with a method, or by a context it reaches.
#[derive(Clone)]
pub(crate) enum How {
    /// This process runs the method.
    Direct(Arc<dyn Method>),
    /// Context `parent` runs it (`ask`: the typed request for the method, bound at `.via`).
    Via { parent: Context, ask: Arc<AskFn> },
}

pub(crate) type AskFn = dyn Fn(Router, ContextId, String, ChildInit, Vec<Offer>) -> BoxStart + Send + Sync;
pub(crate) type BoxStart = Pin<Box<dyn Future<Output = Result<Spawned, BootError>> + Send>>;

impl How {
    /// Method and host, for names and errors.
    pub(crate) fn target(&self, method: &str) -> String {
        match self {
            How::Direct(_) => method.to_owned(),
            How::Via { parent, .. } => format!("{method} via {}", parent.name()),
        }
    }
}

/// A context being started; `.await` it for the [`Context`]. Made by [`Runtime::start`](crate::Runtime::start) (or
/// `cx.start` in handler code, [`crate::StartFrom`]).
///
/// ```no_run
/// # async fn demo(rt: hypha_actors::Runtime) -> Result<(), hypha_bootstrap::BootError> {
/// use std::time::Duration;
/// use hypha_actors::Restart;
/// use hypha_bootstrap::{Ssh, Sudo};
///
/// let gw = rt.start(Ssh::new("alice@gw1")).name("gw1").await?;
/// let db = rt
///     .start(Sudo::new("postgres"))
///     .via(&gw)
///     .name("db")
///     .timeout(Duration::from_secs(30))
///     .restart(Restart::on_loss())
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a start does nothing until it is awaited"]
pub struct Start<M> {
    /// The runtime to start it from, or why there is none.
    rt: Result<Runtime, Arc<StartError>>,
    method: M,
    via: Option<(Context, Arc<AskFn>)>,
    name: Option<String>,
    timeout: Option<Duration>,
    restart: Restart,
}

impl<M: std::fmt::Debug> std::fmt::Debug for Start<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Start")
            .field("method", &self.method)
            .field("via", &self.via.as_ref().map(|(ctx, _)| ctx.name()))
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("restart", &self.restart)
            .finish()
    }
}

impl<M: Method + 'static> Start<M> {
    pub(crate) fn new(rt: Result<Runtime, StartError>, method: M) -> Self {
        Start { rt: rt.map_err(Arc::new), method, via: None, name: None, timeout: None, restart: Restart::Never }
    }

    /// The context's name, as logs and errors show it (default: the method's kind and the id,
    /// `ssh.7`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Give up on the start after `timeout` (each start, when it restarts): it fails with
    /// [`BootError::Timeout`], and whatever it had started is stopped.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// What to do when the context is lost ([`Restart::Never`] by default).
    pub fn restart(mut self, policy: Restart) -> Self {
        self.restart = policy;
        self
    }
}

impl<M: Portable> Start<M> {
    /// Start the context *from* `parent` (Mitogen's `via=`): `parent` runs the method from its
    /// own host and serves it the build for its architecture (its own, or one the controller has,
    /// which it fetches once); calls route through `parent`. Credentials and known hosts for an
    /// ssh hop are read here and travel in memory; the ssh-agent is lent for the start.
    pub fn via(mut self, parent: &Context) -> Self {
        let method = self.method.clone();
        // Every stage of a start has its own deadline on the parent; this bounds the lot.
        let deadline = method.handshake_timeout() * 3 + Duration::from_secs(30);
        let ask = move |router: Router, parent: ContextId, label: String, child: ChildInit, builds: Vec<Offer>| {
            let method = method.clone();
            Box::pin(
                async move { hypha_bootstrap::ask(&router, parent, &label, &child, builds, &method, deadline).await },
            ) as BoxStart
        };
        self.via = Some((parent.clone(), Arc::new(ask)));
        self
    }
}

impl<M: Method + 'static> IntoFuture for Start<M> {
    type Output = Result<Context, BootError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let kind = self.method.target();
        let how = match self.via {
            Some((parent, ask)) => How::Via { parent, ask },
            None => How::Direct(Arc::new(self.method)),
        };
        let (rt, name, timeout, restart) = (self.rt, self.name, self.timeout, self.restart);
        Box::pin(async move {
            let rt = rt.map_err(|e| BootError::start(kind.clone(), e.to_string(), None))?;
            rt.launch(how, kind, name, timeout, restart).await
        })
    }
}
