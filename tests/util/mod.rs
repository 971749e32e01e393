//! Shared by the integration tests: the handlers every test agent serves, and helpers.
//!
//! The test binary is its own agent: a constructor runs [`hypha::run_if_agent`] before libtest's
//! `main`, so a context started from a test serves these handlers and never runs the tests.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hypha::{ByteReceiver, ByteSender, Cx, HandlerError, Handlers, RegisterMethod, Request, Runtime, StartFrom};
use serde::{Deserialize, Serialize};

/// The plugin example's method, registered in every test agent.
#[path = "../../examples/plugin/exec.rs"]
pub mod exec;

macro_rules! request {
    ($name:ident $(($($field:ty),*))? => $resp:ty) => {
        #[derive(Clone, Debug, Serialize, Deserialize)]
        pub struct $name $(($(pub $field),*))?;
        impl Request for $name {
            type Response = $resp;
            const NAME: &'static str = concat!("test.", stringify!($name));
        }
    };
}

request!(Echo(String) => String);
request!(Fail(String) => ());
request!(Panic(String) => ());
request!(Sleep(u64) => u64);
request!(Bump(u64) => ());
request!(Count => u64);
request!(Sink => u64);
request!(SinkThenFail(u64) => u64);
request!(Source(u64) => u64);
request!(Big(usize) => String);
request!(NotRegistered => ());
request!(CallContext(u32) => String);
request!(StartChild => u32);
request!(SpawnOn(u32) => String);
request!(Relay(u32) => String);
request!(Reveal(hypha::Secret<String>) => String);
request!(Numbers(u64) => u64);
request!(Total(u64) => u64);
request!(Garbage(Vec<u8>) => ());

/// Yields `0..n`, answers `n`; counts a caller that went away mid-stream in [`Count`].
impl hypha::Yields for Numbers {
    type Item = u64;
}
/// Sums what it is fed and answers the sum; fails once the sum passes its limit.
impl hypha::Takes for Total {
    type Item = u64;
}
/// Claims to yield numbers, and sends these raw bytes instead: a hostile handler.
impl hypha::Yields for Garbage {
    type Item = u64;
}
request!(Log(String) => ());
request!(LogOn(u32, String) => ());
request!(Stderr(Vec<String>) => ());
request!(Flood(u64) => ());
request!(FloodThread(u64) => ());
request!(FloodStderr(u64) => ());
request!(Forge(String) => ());

static BUMPS: AtomicU64 = AtomicU64::new(0);

/// A scratch directory for one test, removed at its end (read-only directories in it too).
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hypha-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The handlers of the test agents.
pub fn handlers() -> Handlers {
    Handlers::new()
        .method::<exec::Exec>()
        .on(|Echo(s), _: Cx| async move { Ok::<_, HandlerError>(s) })
        .on(|Fail(what), _: Cx| async move {
            let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
            Err::<(), _>(
                anyhow::Error::new(inner).context(format!("could not open {what}")).context("config not loaded"),
            )
        })
        .on(|Panic(msg), _: Cx| async move {
            if !msg.is_empty() {
                panic!("{msg}");
            }
            Ok::<_, HandlerError>(())
        })
        .on(|Sleep(ms), _: Cx| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HandlerError>(ms)
        })
        .on(|Bump(n), _: Cx| async move {
            BUMPS.fetch_add(n, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        })
        .on(|Count, _: Cx| async move { Ok::<_, HandlerError>(BUMPS.load(Ordering::SeqCst)) })
        .on_upload(|Sink, _: Cx, mut rx: ByteReceiver| async move { rx.drain().await.map_err(HandlerError::from) })
        .on_upload(|SinkThenFail(limit), _: Cx, mut rx: ByteReceiver| async move {
            let mut n = 0;
            while let Some(chunk) = rx.recv().await? {
                n += chunk.len() as u64;
                if n >= limit {
                    return Err(HandlerError::from(format!("refusing more than {limit} bytes")));
                }
            }
            Ok(n)
        })
        .on_download(|Source(n), _: Cx, mut tx: ByteSender| async move {
            let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
            let mut left = n;
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                tx.send(chunk.slice(..take)).await?;
                left -= take as u64;
            }
            Ok::<_, HandlerError>(n)
        })
        .on(|Big(n), _: Cx| async move { Ok::<_, HandlerError>("x".repeat(n)) })
        // Start a child from handler code: its id comes from this context's block.
        .on(|StartChild, cx: Cx| async move {
            let child = cx.start(hypha::Local::default()).name("grandchild").await?;
            Ok::<_, HandlerError>(child.id())
        })
        // Ask another context to start a local child: what a compromised agent would attempt.
        .on(|SpawnOn(id), cx: Cx| async move {
            let spawn = hypha::bootstrap::Spawn {
                id: 999,
                name: "forged".into(),
                method: hypha::Local::default(),
                ids: (0, 0),
                builds: Vec::new(),
            };
            Ok::<_, HandlerError>(match cx.call(id, &spawn).await {
                Ok(spawned) => format!("spawned pid {}", spawned.hello.pid),
                Err(e) => format!("refused: {e}"),
            })
        })
        // Print a secret argument every way a careless handler might.
        .on(|Reveal(secret), _: Cx| async move {
            tracing::error!(?secret, "refusing");
            let seen = secret.expose().len();
            Err::<String, _>(HandlerError::from(format!("refusing {secret:?} ({seen} bytes)")))
        })
        .on_yields(|Numbers(n), _: Cx, mut tx: hypha::ItemSender<u64>| async move {
            let mut batch = Vec::with_capacity(1000);
            for i in 0..n {
                batch.push(i);
                if batch.len() == batch.capacity() || i + 1 == n {
                    if let Err(e) = tx.send_all(&batch).await {
                        BUMPS.fetch_add(1, Ordering::SeqCst);
                        return Err(HandlerError::from(e));
                    }
                    batch.clear();
                }
            }
            Ok::<_, HandlerError>(n)
        })
        .on_takes(|Total(limit), _: Cx, mut rx: hypha::ItemReceiver<u64>| async move {
            let mut sum = 0u64;
            while let Some(n) = rx.next().await? {
                sum += n;
                if sum > limit {
                    return Err(HandlerError::from(format!("the sum passed {limit}")));
                }
            }
            Ok::<_, HandlerError>(sum)
        })
        .on_download(|Garbage(bytes), _: Cx, mut tx: ByteSender| async move {
            tx.send(bytes.into()).await?;
            Ok::<_, HandlerError>(())
        })
        // Log at every level: only what the controller asked for is forwarded (info by default).
        .on(|Log(text), _: Cx| async move {
            tracing::trace!(%text, "at trace");
            tracing::debug!(%text, "at debug");
            tracing::info!(answer = 42, "{text}");
            Ok::<_, HandlerError>(())
        })
        // Ask context `id` (a child of this one) to log.
        .on(|LogOn(id, text), cx: Cx| async move { Ok::<_, HandlerError>(cx.call(id, &Log(text)).await?) })
        // Write lines to stderr, the way a careless handler or a library would, then have a
        // command that inherited stderr write one more.
        .on(|Stderr(lines), _: Cx| async move {
            for line in &lines {
                eprintln!("{line}");
            }
            let status = std::process::Command::new("sh").arg("-c").arg("echo from a command >&2").status()?;
            assert!(status.success());
            Ok::<_, HandlerError>(())
        })
        // Log `n` events in a tight loop on the agent's one thread: nothing is sent meanwhile.
        .on(|Flood(n), _: Cx| async move {
            for i in 0..n {
                tracing::info!(i, "flood");
            }
            Ok::<_, HandlerError>(())
        })
        // Log `n` events from another thread while the agent goes on serving.
        .on(|FloodThread(n), _: Cx| async move {
            tokio::task::spawn_blocking(move || {
                for i in 0..n {
                    tracing::info!(i, "flood from a thread");
                }
            })
            .await?;
            Ok::<_, HandlerError>(())
        })
        // Write `n` lines to stderr from another thread while the agent goes on serving.
        .on(|FloodStderr(n), _: Cx| async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut err = std::io::stderr().lock();
                (0..n).try_for_each(|i| writeln!(err, "stderr flood {i}"))
            })
            .await??;
            Ok::<_, HandlerError>(())
        })
        // Send the controller a record that claims to be another context's, and log one too.
        .on(|Forge(claim), cx: Cx| async move {
            use hypha::bootstrap::log::{Batch, Record, Source};
            let record = Record { level: 3, source: Source::Stderr, text: claim.clone() };
            cx.router().send(0, &Batch { records: vec![record] }).await?;
            tracing::info!(id = 99, name = "someone else", "{claim}");
            Ok::<_, HandlerError>(())
        })
        // Call on to another context, passing its error on with `?`.
        .on(|Relay(id), cx: Cx| async move { Ok::<_, HandlerError>(cx.call(id, &Echo("relayed".into())).await?) })
        // Try to make another context run something: what a compromised agent would attempt.
        .on(|CallContext(id), cx: Cx| async move {
            Ok::<_, HandlerError>(match cx.call(id, &Echo("do my bidding".into())).await {
                Ok(_) => "obeyed".to_owned(),
                Err(e) => format!("refused: {e}"),
            })
        })
}

/// Environment variable that turns the test binary into a small controller that starts this many
/// contexts, prints their pids and waits to be killed.
pub const CONTROLLER_ENV: &str = "HYPHA_TEST_CONTROLLER";
/// With [`CONTROLLER_ENV`]: start the contexts over `ssh` on this lab host instead of locally.
pub const CONTROLLER_SSH_ENV: &str = "HYPHA_TEST_CONTROLLER_SSH";

/// Run this test binary as a controller of `n` contexts (over ssh to `ssh_host`, if given), kill it
/// with SIGKILL once they are up, and return the pids of its contexts.
pub fn orphaned_contexts(n: usize, ssh_host: Option<&str>) -> Vec<u32> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.env(CONTROLLER_ENV, n.to_string()).stdout(std::process::Stdio::piped());
    if let Some(host) = ssh_host {
        cmd.env(CONTROLLER_SSH_ENV, host);
    }
    let mut controller = cmd.spawn().expect("controller starts");
    let mut line = String::new();
    std::io::BufReader::new(controller.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pids: Vec<u32> =
        line.strip_prefix("PIDS ").expect("pid line").split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), n);
    controller.kill().unwrap();
    controller.wait().unwrap();
    pids
}

/// Before libtest's main: serve as an agent, or as the controller of the orphan test.
#[ctor::ctor]
fn before_main() {
    hypha::run_if_agent(&handlers());
    hypha::bootstrap::init_logging();
    if let Ok(n) = std::env::var(CONTROLLER_ENV) {
        let n: usize = n.parse().unwrap_or(2);
        let code = match controller(n) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("test controller: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
}

/// Start `n` contexts, print their pids on one line, then wait to be killed.
fn controller(n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let hypha = Runtime::new(handlers())?;
        let mut pids = Vec::new();
        for _ in 0..n {
            let ctx = match std::env::var(CONTROLLER_SSH_ENV) {
                Ok(host) => hypha.start(lab().context("lab")?.ssh(&host)).await,
                Err(_) => hypha.local().await,
            };
            pids.push(ctx.context("start")?.hello().pid.to_string());
        }
        println!("PIDS {}", pids.join(" "));
        use std::io::Write;
        std::io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    })
}

/// A runtime for one test.
pub fn runtime() -> Runtime {
    Runtime::new(handlers()).expect("runtime starts")
}

/// Make a named pipe at `path`. A test and a command it runs meet there: opening one end waits for
/// the other, so each waits for the other exactly, not for a guessed while.
pub fn fifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Everything a command writes into the fifo at `path` (waits, at most 60 s, for it to open and
/// close it).
pub async fn read_fifo(path: &std::path::Path) -> String {
    let p = path.to_owned();
    let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(p).unwrap());
    let read = tokio::time::timeout(Duration::from_secs(60), read).await;
    read.unwrap_or_else(|_| {
        unstick(path, libc::O_WRONLY);
        panic!("nothing opened {} to write", path.display())
    })
    .unwrap()
}

/// Open the fifo at `path` for the other end, without waiting, and close it: a thread blocked in
/// opening it goes on (and the test's runtime can stop) when the command never came.
fn unstick(path: &std::path::Path, flags: i32) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: open reads a NUL-terminated path; the descriptor is closed at once.
    unsafe {
        let fd = libc::open(c.as_ptr(), flags | libc::O_NONBLOCK);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

/// Write `text` into the fifo at `path` (waits, at most 60 s, for a command to open it for
/// reading).
pub async fn write_fifo(path: &std::path::Path, text: &str) {
    let (p, text) = (path.to_owned(), text.to_owned());
    let write = tokio::task::spawn_blocking(move || std::fs::write(p, text).unwrap());
    let write = tokio::time::timeout(Duration::from_secs(60), write).await;
    write
        .unwrap_or_else(|_| {
            unstick(path, libc::O_RDONLY);
            panic!("nothing opened {} to read", path.display())
        })
        .unwrap()
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Wait up to `limit` for `pid` to be gone.
pub async fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

/// This process's resident set size, in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Live processes whose parent is `pid`.
pub fn children(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| alive(p) && ppid(p) == pid)
        .count()
}

/// Send SIGKILL to `pid`.
pub fn kill9(pid: u32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// A real `ssh-agent`, holding `keys`, on a socket of its own; stopped when dropped.
pub struct SshAgent {
    pub socket: std::path::PathBuf,
    dir: std::path::PathBuf,
    process: std::process::Child,
}

impl SshAgent {
    pub fn start(keys: &[std::path::PathBuf]) -> SshAgent {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hypha-test-agent.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let process = std::process::Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).spawn().unwrap();
        for _ in 0..250 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for key in keys {
            let added = std::process::Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &socket).output().unwrap();
            assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
        }
        SshAgent { socket, dir, process }
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The SSH test lab (`tests/lab/lab.sh`): hosts in network namespaces, a user, keys.
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: std::path::PathBuf,
    pub user: String,
    hosts: std::collections::HashMap<String, String>,
    /// Where the userland of a host with one of its own (`bb`, `old`, `arm`) is, in its mount namespace.
    roots: std::collections::HashMap<String, String>,
}

impl Lab {
    /// The address of lab host `name` (`plain`, `noisy`, `locked`, `arm`, `broken`, `bb`, `old`, ...).
    pub fn host(&self, name: &str) -> &str {
        self.hosts.get(name).map(String::as_str).unwrap_or_else(|| panic!("no lab host {name}"))
    }
    /// The directory that is `/` for the sessions of lab host `name`, as [`Lab::root_sh`] sees it:
    /// the userland of `bb`, `old` and `arm` (sshd's ChrootDirectory), `""` for the others. So
    /// `format!("{}/home/hypha/.cache/hypha", lab.root_dir(name))` is that host's agent cache.
    pub fn root_dir(&self, name: &str) -> &str {
        self.host(name);
        self.roots.get(name).map_or("", String::as_str)
    }
    pub fn key(&self) -> std::path::PathBuf {
        self.dir.join("keys/id_ed25519")
    }
    pub fn rsa_key(&self) -> std::path::PathBuf {
        self.dir.join("keys/id_rsa")
    }
    pub fn stranger_key(&self) -> std::path::PathBuf {
        self.dir.join("keys/stranger_ed25519")
    }
    pub fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("keys").join(name)).unwrap().trim().to_owned()
    }
    pub fn known_hosts(&self) -> std::path::PathBuf {
        self.dir.join("known_hosts")
    }
    pub fn wrong_known_hosts(&self) -> std::path::PathBuf {
        self.dir.join("wrong_known_hosts")
    }
    /// `openssh` to lab host `name` as the lab user, checking its key against the lab's known_hosts.
    pub fn openssh(&self, name: &str) -> hypha::OpenSsh {
        hypha::OpenSsh::new(format!("{}@{}", self.user, self.host(name)))
            .with_identity(self.key())
            .with_known_hosts(self.known_hosts())
            .with_args(["-F", "/dev/null"])
    }
    /// `ssh` (in process) to lab host `name` as the lab user, with the lab's ed25519 key.
    pub fn ssh(&self, name: &str) -> hypha::Ssh {
        hypha::Ssh::new(format!("{}@{}", self.user, self.host(name)))
            .with_key(self.key())
            .with_known_hosts(self.known_hosts())
    }
    /// Both SSH methods to lab host `name`, configured alike.
    pub fn both(&self, name: &str) -> Vec<Box<dyn hypha::Method>> {
        vec![Box::new(self.openssh(name)), Box::new(self.ssh(name))]
    }
    /// Run a shell command on lab host `name`, which may be behind other hosts: from inside its
    /// network namespace (the lab's hosts share this machine). Its stdout.
    pub fn sh_via_chain(&self, name: &str, command: &str) -> String {
        let mut ssh = std::process::Command::new("ip");
        ssh.args(["netns", "exec", &format!("hypha-{name}"), "ssh"]);
        self.run_ssh(ssh, name, command)
    }

    /// Run a shell command as root on lab host `name`: inside its mount namespace (its own
    /// `/home`, `/tmp`, `/dev/shm`), entered from this machine, not over ssh. Its stdout.
    pub fn root_sh(&self, name: &str, command: &str) -> String {
        self.sh_as(name, "root", command)
    }

    /// Run a shell command as local user `user` on lab host `name` (as [`Lab::root_sh`] does, then
    /// dropping to the user): how a test plays another user of that host. Its stdout.
    pub fn sh_as(&self, name: &str, user: &str, command: &str) -> String {
        let pidfile = self.dir.join("hosts").join(name).join("sshd.pid");
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let mut cmd = std::process::Command::new("nsenter");
        cmd.args(["-t", pid.trim(), "-m", "-u", "-n", "--"]);
        if user != "root" {
            cmd.args(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"]);
        }
        let out = cmd.args(["sh", "-c", command]).output().unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a shell command on lab host `name` with the system ssh client; its stdout.
    pub fn sh(&self, name: &str, command: &str) -> String {
        self.run_ssh(std::process::Command::new("ssh"), name, command)
    }

    fn run_ssh(&self, mut ssh: std::process::Command, name: &str, command: &str) -> String {
        let out = ssh
            .args(["-F", "/dev/null", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts().display()))
            .arg("-i")
            .arg(self.key())
            .arg(format!("{}@{}", self.user, self.host(name)))
            .arg(command)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The lab, started if need be; `None` (the test skips) where it cannot run outside CI. In CI
/// (`CI=true`) a lab that cannot start fails the test.
pub fn lab() -> Option<Lab> {
    static LAB: std::sync::OnceLock<Result<Lab, String>> = std::sync::OnceLock::new();
    let lab = LAB.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the SSH lab needs root".into());
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/lab.sh");
        let out = std::process::Command::new("bash").arg(&script).arg("up").output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("lab.sh up failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let dir = std::path::PathBuf::from(std::env::var("HYPHA_LAB_DIR").unwrap_or_else(|_| "/run/hypha-lab".into()));
        let env = std::fs::read_to_string(dir.join("env")).map_err(|e| e.to_string())?;
        let mut hosts = std::collections::HashMap::new();
        let mut roots = std::collections::HashMap::new();
        let mut user = String::new();
        for line in env.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if let Some(name) = k.strip_prefix("HOST_") {
                    hosts.insert(name.to_owned(), v.to_owned());
                } else if let Some(name) = k.strip_prefix("ROOT_") {
                    roots.insert(name.to_owned(), v.to_owned());
                } else if k == "USER" {
                    user = v.to_owned();
                }
            }
        }
        Ok(Lab { dir, user, hosts, roots })
    });
    match lab {
        Ok(lab) => Some(lab.clone()),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI needs the SSH lab: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// The call behaviours every kind of context must show; run against local and SSH contexts alike.
pub async fn exercise(ctx: &hypha::Context) {
    use hypha::{CallError, RemoteErrorKind};
    assert_eq!(ctx.call(Echo("hello".into())).await.unwrap(), "hello");
    let who = ctx.call(hypha::Whoami).await.unwrap();
    assert_eq!(who.pid, ctx.hello().pid);

    let err = ctx.call(Fail("/etc/app.toml".into())).await.unwrap_err();
    let CallError::Remote(r) = &err else { panic!("{err}") };
    assert_eq!(r.causes, ["could not open /etc/app.toml", "no such file"]);
    assert_eq!(r.context, ctx.id());

    let err = ctx.call(Panic("boom".into())).await.unwrap_err();
    assert!(matches!(&err, CallError::Remote(r) if r.kind == RemoteErrorKind::Panic && r.message == "boom"), "{err}");
    let err = ctx.call(NotRegistered).await.unwrap_err();
    assert!(matches!(&err, CallError::Remote(r) if r.kind == RemoteErrorKind::UnknownHandler), "{err}");

    let before = ctx.call(Count).await.unwrap();
    ctx.send(Bump(5)).await.unwrap();
    let mut after = ctx.call(Count).await.unwrap();
    for _ in 0..100 {
        if after == before + 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        after = ctx.call(Count).await.unwrap();
    }
    assert_eq!(after, before + 5);

    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let ctx = ctx.clone();
        set.spawn(async move { (i, ctx.call(Echo(format!("#{i}"))).await.unwrap()) });
    }
    while let Some(r) = set.join_next().await {
        let (i, s) = r.unwrap();
        assert_eq!(s, format!("#{i}"));
    }

    let n = ctx.upload(Sink, tokio::io::AsyncReadExt::take(tokio::io::repeat(3), 8 << 20)).await.unwrap();
    assert_eq!(n, 8 << 20);
    let mut got = Vec::new();
    assert_eq!(ctx.download(Source(3 << 20), &mut got).await.unwrap(), 3 << 20);
    assert_eq!(got.len(), 3 << 20);
}

/// The parent pid of `pid`, from /proc.
pub fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}
