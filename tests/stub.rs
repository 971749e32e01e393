//! The real sh stub, run by a real `sh` on this host: upload, atomic install, cache hit, handshake.

#![allow(clippy::unwrap_used)]

mod util;

use std::process::Stdio;
use std::time::Duration;

use hypha::bootstrap::{builds, exe_hash, handshake, stub};
use hypha::runtime::proto::{Hello, Init};

/// The Init the tests answer an agent's Hello with.
fn init(_: &Hello) -> Init {
    Init {
        id: 1,
        ancestors: vec![0],
        name: "stub".into(),
        max_frame: 1 << 20,
        ids: (0, 0),
        link_timeout_ms: 30_000,
        call_timeout_ms: 30_000,
        log_level: 3,
    }
}

async fn start_stub(cache: &std::path::Path, nonce: &str) -> (Option<u64>, hypha::runtime::proto::Hello) {
    let builds = builds::Builds::current().await.unwrap();
    let hash = stub::Fingerprint::current().await.unwrap().hash.as_str();
    let cmd = stub::command(nonce, &builds);
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &cmd])
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let (outcome, rest) =
        stub::run(&mut stdout, &mut stdin, Default::default(), nonce, &builds, "sh test", Duration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(outcome.dir, cache.join("hypha").display().to_string());
    let expect = handshake::Expect {
        nonce,
        binary_hash: hash,
        max_frame: 1 << 20,
        timeout: Duration::from_secs(30),
        target: "sh test",
    };
    let (hello, _) = handshake::parent(&mut stdout, &mut stdin, &expect, init, rest).await.unwrap();
    drop(stdin); // the agent exits when its parent goes away
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    (outcome.uploaded, hello)
}

#[tokio::test]
async fn the_stub_uploads_once_then_runs_the_cached_agent() {
    let cache = std::env::temp_dir().join(format!("hypha-stub-test-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let (uploaded, hello) = start_stub(&cache, "first").await;
    let payload = stub::Payload::current().await.unwrap();
    assert_eq!(uploaded, Some(payload.gzip.len() as u64), "sent compressed");
    assert!(payload.gzip.len() < payload.raw.len());
    assert_eq!(hello.binary_hash, exe_hash().unwrap());
    let installed = cache.join("hypha").join(format!("hypha-{}", exe_hash().unwrap()));
    assert_eq!(stub::cksum(&std::fs::read(&installed).unwrap()), payload.cksum);
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("hypha")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");

    let (uploaded, hello2) = start_stub(&cache, "second").await;
    assert_eq!(uploaded, None, "the second start uploads nothing");
    assert_ne!(hello2.pid, hello.pid);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// Start the stub under a real `sh` with `cache` as `$XDG_CACHE_HOME` (and `path` as `$PATH`, if
/// given).
fn spawn_stub(
    cache: &std::path::Path,
    nonce: &str,
    builds: &builds::Builds,
    path: Option<&std::path::Path>,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.args(["-c", &stub::command(nonce, builds)])
        .env("XDG_CACHE_HOME", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd.spawn().unwrap()
}

/// A writer that flips one byte at `at` of everything written through it: a damaged upload.
struct FlipAt<W> {
    inner: W,
    written: usize,
    at: usize,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FlipAt<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut data = buf.to_vec();
        if let Some(i) = self.at.checked_sub(self.written).filter(|&i| i < data.len()) {
            data[i] ^= 0xff;
        }
        let n = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, &data))?;
        self.written += n;
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_failed_replacement_says_what_was_found_and_what_was_tried() {
    let cache = std::env::temp_dir().join(format!("hypha-stub-heal-{}", std::process::id()));
    let dir = cache.join("hypha");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let agent = stub::Fingerprint::current().await.unwrap();
    // A damaged cached agent (five bytes), and an upload that is damaged on the way.
    let cached = dir.join(format!("hypha-{}", agent.hash));
    std::fs::write(&cached, b"junk\n").unwrap();
    std::fs::set_permissions(&cached, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let builds = builds::Builds::current().await.unwrap();
    let mut child = spawn_stub(&cache, "heal", &builds, None);
    let mut stdin = FlipAt { inner: child.stdin.take().unwrap(), written: 0, at: 100_000 };
    let mut stdout = child.stdout.take().unwrap();
    let err =
        stub::run(&mut stdout, &mut stdin, Default::default(), "heal", &builds, "sh test", Duration::from_secs(60))
            .await
            .unwrap_err();
    let text = err.to_string();
    let hypha::BootError::Install { found, .. } = &err else { panic!("{text}") };
    assert_eq!(found.as_deref(), Some(format!("5 bytes long, not {}", agent.len).as_str()), "{text}");
    assert!(text.starts_with("sh test: the cached agent in "), "{text}");
    assert!(
        text.contains("and a fresh upload failed: sent ") && text.contains("the uploaded agent is damaged"),
        "{text}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "no temporary file or lock left: {left:?}");
    std::fs::remove_dir_all(&cache).unwrap();
}

/// A directory of links to the real `tools`, to run the stub with as its whole `PATH`.
fn only_tools(tag: &str, tools: &[&str]) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("hypha-stub-{tag}-{}", std::process::id()));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in tools {
        let real =
            ["/usr/bin", "/bin"].iter().map(|d| std::path::Path::new(d).join(tool)).find(|p| p.exists()).unwrap();
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    root
}

/// Start the stub with only the tools in `root/bin` on its `PATH` and `root/cache` as its cache,
/// through the handshake.
async fn start_with_path(root: &std::path::Path, nonce: &str) -> Result<stub::Outcome, hypha::BootError> {
    let builds = builds::Builds::current().await.unwrap();
    let agent = stub::Fingerprint::current().await.unwrap();
    let mut child = spawn_stub(&root.join("cache"), nonce, &builds, Some(&root.join("bin")));
    let (mut stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let (outcome, rest) =
        stub::run(&mut stdout, &mut stdin, Default::default(), nonce, &builds, "sh test", Duration::from_secs(60))
            .await?;
    let expect = handshake::Expect {
        nonce,
        binary_hash: &agent.hash,
        max_frame: 1 << 20,
        timeout: Duration::from_secs(30),
        target: "sh test",
    };
    handshake::parent(&mut stdout, &mut stdin, &expect, init, rest).await?;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Ok(outcome)
}

#[tokio::test]
async fn without_cksum_the_stub_checks_sizes_and_still_installs() {
    // Every tool the stub uses but `cksum` (as on some busybox builds).
    let tools = ["sh", "id", "uname", "gzip", "ls", "mkdir", "chmod", "rm", "cat", "head", "mv", "sleep", "stty"];
    let root = only_tools("nocksum", &tools);
    let agent = stub::Fingerprint::current().await.unwrap();
    let first = start_with_path(&root, "nock1").await.unwrap();
    assert!(first.uploaded.is_some());
    assert_eq!(start_with_path(&root, "nock2").await.unwrap().uploaded, None, "cached");
    // A truncated agent: the size gives it away.
    let cache = root.join("cache");
    let cached = cache.join("hypha").join(format!("hypha-{}", agent.hash));
    let bytes = std::fs::read(&cached).unwrap();
    std::fs::write(cache.join("hypha").join("short"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::set_permissions(cache.join("hypha").join("short"), std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .unwrap();
    std::fs::rename(cache.join("hypha").join("short"), &cached).unwrap();
    let healed = start_with_path(&root, "nock3").await.unwrap();
    assert!(healed.uploaded.is_some());
    assert_eq!(healed.replaced, Some(format!("{} bytes long, not {}", bytes.len() / 2, agent.len)));
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn with_the_fewest_tools_the_stub_takes_the_agent_raw_through_dd() {
    // No cksum, gzip, head, stty or sleep: the stub falls back to a raw upload read by `dd`
    // (whole blocks, `iflag=fullblock`, as GNU and busybox dd have).
    let root = only_tools("fewest", &["sh", "id", "uname", "ls", "mkdir", "chmod", "rm", "cat", "mv", "dd"]);
    let first = start_with_path(&root, "few1").await.unwrap();
    let payload = stub::Payload::current().await.unwrap();
    assert_eq!(first.uploaded, Some(payload.raw_len), "sent raw");
    assert_eq!(start_with_path(&root, "few2").await.unwrap().uploaded, None, "cached");
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn a_host_with_no_build_for_its_architecture_says_so_and_makes_nothing() {
    // The stub as a controller with only a riscv64 build would run it here.
    let builds = builds::Builds::current().await.unwrap();
    let mut argv = stub::argv("nob", &builds);
    let at = argv.iter().position(|a| a == std::env::consts::ARCH).unwrap();
    argv[at] = "riscv64".into();
    let cache = std::env::temp_dir().join(format!("hypha-stub-nobuild-{}", std::process::id()));
    let out = std::process::Command::new(&argv[0]).args(&argv[1..]).env("XDG_CACHE_HOME", &cache).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report = stub::Report::parse(text.trim()).unwrap();
    assert_eq!(report.arch, std::env::consts::ARCH);
    assert_eq!(report.cache, stub::Cache::NoBuild);
    assert_eq!(out.status.code(), Some(3));
    assert!(!cache.exists(), "no cache directory made for a build that is not there");
}
