//! `--persist DURATION`: contexts kept up between runs, as ssh's ControlPersist keeps its master
//! connections.
//!
//! The first run with `--persist` starts a background process of this user's (this same binary,
//! `hypha __persist SOCKET`, in a session of its own) and hands it its rounds; the process keeps
//! a [`Crew`] for each set of reach options it was asked for, so a later run on the same hosts,
//! with the same options, costs one message per host. It ends DURATION after its last round (of
//! the last run's `--persist`; `0`: at once), shutting its contexts down.
//!
//! Trust: the socket is in a directory of this user's that nobody else may enter (`0700`, owned
//! by the user, not a link: anything else is refused, not repaired), and the process serves only
//! peers of its own uid (`SO_PEERCRED`). Its name carries this binary's hash, so a rebuilt
//! `hypha` never talks to an older one's process. Each request and event is one frame: a 4-byte
//! big-endian length, then JSON; a frame over [`MAX_FRAME`] ends the connection.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Mutex};

use super::crew::{Crew, Event, Job, EVENTS};
use super::targets::Plan;
use super::Setup;

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 64 << 20;
/// How long a run waits for a process it started to be ready.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A client's request.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    /// Which crew: runs with the same key share contexts.
    key: String,
    setup: Setup,
    plans: Vec<Plan>,
    job: Job,
    retry: bool,
    /// How long the process stays after this round.
    keep: Duration,
}

/// What the process sends back.
#[derive(Debug, Serialize, Deserialize)]
enum Tell {
    Event(Event),
    /// The round is over.
    Done,
    /// The round could not be run.
    Error(String),
}

/// A run's handle on the process.
#[derive(Debug)]
pub(crate) struct Client {
    socket: PathBuf,
    key: String,
    setup: Setup,
    keep: Duration,
}

impl Client {
    /// Find this user's process, or start it; `key` says which of its crews this run shares.
    pub(crate) async fn open(setup: Setup, key: String, keep: Duration) -> anyhow::Result<Client> {
        let dir = private_dir()?;
        let hash = hypha::bootstrap::exe_hash().context("hashing this binary")?;
        let socket = dir.join(format!("persist-{}.sock", hash.get(..16).unwrap_or(hash)));
        if UnixStream::connect(&socket).await.is_err() {
            spawn(&dir, &socket).await?;
        }
        Ok(Client { socket, key, setup, keep })
    }

    /// One round in the process; its events go to `events`. Dropping it ends the connection,
    /// which stops the round there (its commands are killed).
    pub(crate) async fn round(
        &self,
        plans: &[Plan],
        job: &Job,
        retry: bool,
        events: &mpsc::Sender<Event>,
    ) -> anyhow::Result<()> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to the --persist process at {}", self.socket.display()))?;
        let (mut rd, mut wr) = stream.into_split();
        let ask = Ask {
            key: self.key.clone(),
            setup: self.setup.clone(),
            plans: plans.to_vec(),
            job: job.clone(),
            retry,
            keep: self.keep,
        };
        write_frame(&mut wr, &ask).await.context("sending the round to the --persist process")?;
        loop {
            match read_frame::<Tell>(&mut rd).await {
                Ok(Some(Tell::Event(e))) => {
                    if events.send(e).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(Some(Tell::Done)) => return Ok(()),
                Ok(Some(Tell::Error(why))) => bail!("the --persist process: {why}"),
                Ok(None) => bail!("the --persist process ended the round before its end"),
                Err(e) => return Err(e).context("reading from the --persist process"),
            }
        }
    }

    /// Nothing to close here: the process keeps the contexts.
    pub(crate) async fn close(self) {}
}

/// The directory of this user's sockets: `$HYPHA_PERSIST_DIR`, or `hypha` in
/// `$XDG_RUNTIME_DIR`, or `/tmp/hypha-UID`; made `0700` if missing, and refused unless this user
/// owns it and nobody else may enter it.
fn private_dir() -> anyhow::Result<PathBuf> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = match (std::env::var_os("HYPHA_PERSIST_DIR"), std::env::var_os("XDG_RUNTIME_DIR")) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(run)) => Path::new(&run).join("hypha"),
        (None, None) => PathBuf::from(format!("/tmp/hypha-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("making {}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(&dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory (a link?): refusing it for --persist", dir.display());
    }
    if meta.uid() != uid {
        bail!("{}: owned by uid {}, not {uid}: refusing it for --persist", dir.display(), meta.uid());
    }
    if meta.mode() & 0o077 != 0 {
        bail!("{}: mode {:o} lets others in: refusing it for --persist", dir.display(), meta.mode() & 0o777);
    }
    Ok(dir)
}

/// Start the process for `socket`, and wait until it serves.
async fn spawn(dir: &Path, socket: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this binary")?;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join("persist.log"))
        .context("opening the --persist process's log")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__persist")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child gets a session of its own, so neither this
    // terminal's Ctrl-C nor its hang-up reaches it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the --persist process")?;
    let stdout = child.stdout.take().context("the --persist process's stdout")?;
    // Its first line says it serves (or why it does not); the pipe then closes.
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let line = match tokio::time::timeout(READY_WITHIN, ready).await {
        Ok(Ok(Ok(line))) => line,
        Ok(_) => bail!("the --persist process did not start (see {})", dir.join("persist.log").display()),
        Err(_) => {
            let _ = child.kill();
            bail!("the --persist process was not ready within {READY_WITHIN:?}")
        }
    };
    // It lives on; its exit is reaped by init once this process has gone.
    std::mem::forget(child);
    match line.trim() {
        "ready" => Ok(()),
        other => bail!("the --persist process: {other}"),
    }
}

/// `hypha __persist SOCKET`: serve rounds until idle for the last round's `keep`.
pub(crate) async fn serve(socket: &Path) -> anyhow::Result<u8> {
    let listener = match bind(socket).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            // Another run started one first: it serves.
            println!("ready");
            return Ok(0);
        }
        Err(e) => {
            println!("{e:#}");
            return Err(e);
        }
    };
    println!("ready");
    // Nothing else goes to stdout: the run that started this process has stopped reading it.
    // SAFETY: dup2 onto fd 1 of a descriptor this process just opened.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let state = Arc::new(Server::default());
    // Each connection's end, and the `keep` its round asked for (none: it asked for no round, as
    // a probe or a hostile peer, and changes nothing).
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<Duration>>();
    // Until its first round, time for the run that started it to ask for one.
    let mut keep = READY_WITHIN;
    let mut active = 0usize;
    loop {
        let idle = async {
            if active > 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(keep).await;
        };
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                match stream.peer_cred() {
                    Ok(cred) if cred.uid() == uid => {}
                    // Another user's connection: nothing is read from it.
                    _ => continue,
                }
                active += 1;
                let (state, done) = (state.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let keep = state.connection(stream).await;
                    let _ = done.send(keep);
                });
            }
            Some(k) = done_rx.recv() => {
                active -= 1;
                keep = k.unwrap_or(keep);
            }
            _ = idle => break,
        }
    }
    let _ = std::fs::remove_file(socket);
    let crews: Vec<Arc<Crew>> = state.crews.lock().await.drain().map(|(_, c)| c).collect();
    for crew in crews {
        crew.shutdown().await;
    }
    Ok(0)
}

/// Listen at `socket`; a socket left there by a process that has gone is replaced. `None`: a
/// process answers there already.
async fn bind(socket: &Path) -> anyhow::Result<Option<UnixListener>> {
    match UnixListener::bind(socket) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(socket).await.is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(socket).with_context(|| format!("removing the stale {}", socket.display()))?;
            let l = UnixListener::bind(socket).with_context(|| format!("listening at {}", socket.display()))?;
            Ok(Some(l))
        }
        Err(e) => Err(e).with_context(|| format!("listening at {}", socket.display())),
    }
}

/// The process's crews, by key.
#[derive(Debug, Default)]
struct Server {
    crews: Mutex<HashMap<String, Arc<Crew>>>,
}

impl Server {
    /// Serve one connection's round; the `keep` it asked for.
    async fn connection(&self, stream: UnixStream) -> Option<Duration> {
        let (mut rd, mut wr) = stream.into_split();
        let ask: Ask = match read_frame(&mut rd).await {
            Ok(Some(ask)) => ask,
            _ => return None,
        };
        let crew = {
            let mut crews = self.crews.lock().await;
            match crews.get(&ask.key) {
                Some(crew) => crew.clone(),
                None => match ask.setup.crew() {
                    Ok(crew) => crews.entry(ask.key.clone()).or_insert(Arc::new(crew)).clone(),
                    Err(e) => {
                        let _ = write_frame(&mut wr, &Tell::Error(format!("{e:#}"))).await;
                        return Some(ask.keep);
                    }
                },
            }
        };
        let (tx, mut rx) = mpsc::channel(EVENTS);
        let round = async {
            crew.round(&ask.plans, &ask.job, &tx, ask.retry).await;
            drop(tx);
        };
        let send = async {
            while let Some(event) = rx.recv().await {
                if write_frame(&mut wr, &Tell::Event(event)).await.is_err() {
                    return false;
                }
            }
            write_frame(&mut wr, &Tell::Done).await.is_ok()
        };
        // The client sends nothing more: a read that ends means it has gone, and the round stops.
        let gone = async {
            let mut byte = [0u8; 1];
            let _ = rd.read(&mut byte).await;
        };
        tokio::select! {
            _ = async { tokio::join!(round, send) } => {}
            _ = gone => {}
        }
        Some(ask.keep)
    }
}

async fn write_frame(wr: &mut (impl AsyncWriteExt + Unpin), value: &impl Serialize) -> anyhow::Result<()> {
    let body = serde_json::to_vec(value)?;
    if body.len() > MAX_FRAME {
        bail!("a frame of {} bytes is over the limit of {MAX_FRAME}", body.len());
    }
    wr.write_all(&(body.len() as u32).to_be_bytes()).await?;
    wr.write_all(&body).await?;
    Ok(())
}

/// The next frame, or `None` at the end of the stream.
async fn read_frame<T: for<'de> Deserialize<'de>>(rd: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<Option<T>> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        bail!("a frame of {len} bytes is over the limit of {MAX_FRAME}");
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}
