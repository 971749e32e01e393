//! The real sh stub, run by a real `sh` on this host: upload, atomic install, cache hit, handshake.

#![allow(clippy::unwrap_used)]

mod util;

use std::process::Stdio;
use std::time::Duration;

use hypha::bootstrap::{exe_hash, handshake, stub};
use hypha::runtime::proto::Init;

async fn start_stub(cache: &std::path::Path, nonce: &str) -> (Option<u64>, hypha::runtime::proto::Hello) {
    let agent = stub::Fingerprint::current().await.unwrap();
    let hash = agent.hash.as_str();
    let cmd = stub::command(nonce, agent);
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
        stub::run(&mut stdout, &mut stdin, Default::default(), nonce, "sh test", Duration::from_secs(60))
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
    let init = |_: &_| Init { id: 1, ancestors: vec![0], name: "stub".into(), max_frame: 1 << 20, ids: (0, 0) };
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
