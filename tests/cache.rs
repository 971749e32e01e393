//! The agent cache on a real lab host (`cache`, used by these tests alone, one at a time): the
//! stub trusts only directories and files that the connecting user alone could have written,
//! heals a damaged agent with a fresh upload, and many starts at once upload it once.

#![allow(clippy::unwrap_used)]

mod util;

use hypha::bootstrap::stub::Fingerprint;
use util::*;

/// The lab host these tests plant files on.
const HOST: &str = "cache";
/// A program that leaves evidence if it is ever run, then fails.
const PLANT: &str = r"#!/bin/sh\ntouch /tmp/planted-ran\nexit 1\n";

/// These tests share one host's cache: one at a time (nextest runs them in the `lab-cache` group;
/// this lock does it under `cargo test`).
static CACHE_HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An empty cache and no evidence on the host; the lab user's uid.
fn reset(lab: &Lab) -> String {
    lab.root_sh(HOST, "rm -rf /home/hypha/.cache /tmp/hypha-* /dev/shm/hypha-* /tmp/planted-ran");
    lab.root_sh(HOST, "id -u hypha").trim().to_owned()
}

fn planted_program_ran(lab: &Lab) -> bool {
    lab.root_sh(HOST, "test -e /tmp/planted-ran && echo ran || echo never").trim() == "ran"
}

/// `owner mode size cksum` of a file on the host.
fn file_facts(lab: &Lab, path: &str) -> String {
    let ls = lab.root_sh(HOST, &format!("ls -ln {path}"));
    let f: Vec<&str> = ls.split_whitespace().collect();
    let sum = lab.root_sh(HOST, &format!("cksum < {path}"));
    format!("{} {} {} {}", f[2], f[0], f[4], sum.split_whitespace().next().unwrap())
}

fn good_facts(uid: &str, agent: &Fingerprint) -> String {
    format!("{uid} -rwx------ {} {}", agent.len, agent.cksum)
}

#[tokio::test]
async fn a_cache_directory_another_user_made_is_not_used() {
    let Some(lab) = lab() else { return };
    let _one = CACHE_HOST.lock().await;
    let agent = Fingerprint::current().await.unwrap();
    let uid = reset(&lab);
    // The home cache cannot be made, so the stub goes on to /tmp, where another local user has
    // made the lab user's directory first (anyone can: the name is predictable) and put a
    // "cached agent" of the right name in it (the hash shows in `ps`).
    lab.root_sh(HOST, "mkdir -p /home/hypha/.cache && chown hypha: /home/hypha/.cache && chmod 500 /home/hypha/.cache");
    let planted = format!("/tmp/hypha-{uid}");
    lab.sh_as(
        HOST,
        "hypha-other",
        &format!(
            "mkdir -m 777 {planted} && printf '{PLANT}' > {planted}/hypha-{h} && chmod 777 {planted}/hypha-{h}",
            h = agent.hash
        ),
    );
    let before = lab.root_sh(HOST, &format!("ls -lan {planted}"));
    let rt = runtime();
    for method in lab.both(HOST) {
        let ctx = rt.start(method).await.unwrap();
        assert_eq!(ctx.call(Echo("ok".into())).await.unwrap(), "ok");
        let exe = lab.root_sh(HOST, &format!("readlink /proc/{}/exe", ctx.hello().pid));
        assert_eq!(exe.trim(), format!("/dev/shm/hypha-{uid}/hypha-{}", agent.hash), "the next directory of its own");
    }
    assert!(!planted_program_ran(&lab), "the planted program ran");
    // Nothing was written to the other user's directory either.
    assert_eq!(lab.root_sh(HOST, &format!("ls -lan {planted}")), before);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_cached_agent_another_user_owns_is_replaced_not_run() {
    let Some(lab) = lab() else { return };
    let _one = CACHE_HOST.lock().await;
    let agent = Fingerprint::current().await.unwrap();
    let uid = reset(&lab);
    let rt = runtime();
    let first = rt.start(lab.ssh(HOST)).await.unwrap();
    assert!(first.uploaded().is_some());
    let file = format!("/home/hypha/.cache/hypha/hypha-{}", agent.hash);
    // In the user's own directory, files of another owner (root put them there, say), or of the
    // user but writable by others: a program that leaves evidence, and an exact copy of the agent
    // (which only its owner or mode gives away).
    let plants = [
        format!("printf '{PLANT}' > {file}.new && chown hypha-other: {file}.new && chmod 755 {file}.new"),
        format!("cp {file} {file}.new && chown hypha-other: {file}.new && chmod 755 {file}.new"),
        format!("cp -p {file} {file}.new && chmod 777 {file}.new"),
    ];
    for plant in plants {
        lab.root_sh(HOST, &format!("{plant} && mv -f {file}.new {file}"));
        for (i, method) in lab.both(HOST).into_iter().enumerate() {
            let ctx = rt.start(method).await.unwrap_or_else(|e| panic!("after `{plant}`: {e}"));
            assert_eq!(ctx.call(Echo("ok".into())).await.unwrap(), "ok");
            // The first start replaces it, the second runs the replacement.
            assert_eq!(ctx.uploaded().is_some(), i == 0, "after `{plant}`, start {i}");
            assert_eq!(file_facts(&lab, &file), good_facts(&uid, agent), "after `{plant}`");
        }
        assert!(!planted_program_ran(&lab), "after `{plant}`: the planted program ran");
    }
    rt.shutdown().await;
}

/// Damage the cached agent with `damage` (a shell command run as the lab user, `$f` the file),
/// then check both methods heal it: the first start uploads a fresh agent, the next runs it.
async fn heals(damage: &str) {
    let Some(lab) = lab() else { return };
    let _one = CACHE_HOST.lock().await;
    let agent = Fingerprint::current().await.unwrap();
    let uid = reset(&lab);
    let rt = runtime();
    let first = rt.start(lab.openssh(HOST)).await.unwrap();
    assert!(first.uploaded().is_some());
    let file = format!("/home/hypha/.cache/hypha/hypha-{}", agent.hash);
    for method in lab.both(HOST) {
        // A new file renamed over the old one: the running agents keep theirs.
        lab.sh_as(HOST, "hypha", &format!("f={file}; {damage}"));
        assert_ne!(file_facts(&lab, &file), good_facts(&uid, agent), "`{damage}` damaged nothing");
        let target = method.target();
        let healed = rt.start(method).await.unwrap_or_else(|e| panic!("{target} after `{damage}`: {e}"));
        assert!(healed.uploaded().is_some(), "{target} after `{damage}`: no fresh upload");
        assert_eq!(healed.call(Echo("ok".into())).await.unwrap(), "ok");
        assert_eq!(file_facts(&lab, &file), good_facts(&uid, agent), "{target} after `{damage}`");
        let again = rt.start(lab.ssh(HOST)).await.unwrap();
        assert_eq!(again.uploaded(), None, "{target} after `{damage}`: the healed agent is used");
    }
    assert!(!planted_program_ran(&lab), "after `{damage}`: the planted program ran");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_cached_agent_is_replaced() {
    // The same size, a few bytes overwritten: only the checksum tells.
    heals("cp -p $f $f.new && printf HYPHA | dd of=$f.new bs=1 seek=4096 conv=notrunc 2>/dev/null && mv -f $f.new $f")
        .await;
}

#[tokio::test]
async fn a_truncated_cached_agent_is_replaced() {
    heals("head -c 100000 $f > $f.new && chmod 700 $f.new && mv -f $f.new $f").await;
}

#[tokio::test]
async fn another_program_by_the_agents_name_is_replaced_not_run() {
    heals(&format!("printf '{PLANT}' > $f.new && chmod 700 $f.new && mv -f $f.new $f")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_starts_at_once_on_an_empty_cache_all_succeed_with_one_upload() {
    let Some(lab) = lab() else { return };
    let _one = CACHE_HOST.lock().await;
    let agent = Fingerprint::current().await.unwrap();
    reset(&lab);
    let rt = runtime();
    let starts = (0..20).map(|i| {
        let method: Box<dyn hypha::Method> =
            if i % 2 == 0 { Box::new(lab.ssh(HOST)) } else { Box::new(lab.openssh(HOST)) };
        std::future::IntoFuture::into_future(rt.start(method))
    });
    let results = futures_join_all(starts).await;
    let mut uploads = 0;
    let mut contexts = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        let ctx = result.unwrap_or_else(|e| panic!("start {i}: {e}"));
        uploads += usize::from(ctx.uploaded().is_some());
        contexts.push(ctx);
    }
    eprintln!("20 concurrent starts on an empty cache: {uploads} upload(s)");
    assert_eq!(uploads, 1, "one start uploads, the others wait for its agent");
    for ctx in &contexts {
        assert_eq!(ctx.call(Echo("ok".into())).await.unwrap(), "ok");
    }
    let listing = lab.root_sh(HOST, "ls -A /home/hypha/.cache/hypha");
    assert_eq!(listing.trim(), format!("hypha-{}", agent.hash), "no lock or temporary file left");
    rt.shutdown().await;
}

#[tokio::test]
async fn an_agent_whose_file_was_replaced_still_starts_children_and_serves_itself() {
    let Some(lab) = lab() else { return };
    let _one = CACHE_HOST.lock().await;
    let agent = Fingerprint::current().await.unwrap();
    reset(&lab);
    let rt = runtime();
    let hop = rt.start(lab.ssh(HOST)).await.unwrap();
    // What a sibling's install does to a running agent's path (and a cleanup would): the file it
    // runs from is no longer there. It starts a local child and uploads itself all the same.
    lab.root_sh(HOST, &format!("rm /home/hypha/.cache/hypha/hypha-{}", agent.hash));
    let local = rt.start(hypha::Local::default()).via(&hop).await.unwrap();
    assert_eq!(local.call(Echo("local".into())).await.unwrap(), "local");
    let far = rt.start(lab.ssh(HOST)).via(&hop).await.unwrap();
    assert!(far.uploaded().is_some(), "the hop uploaded its own executable");
    assert_eq!(far.call(Echo("far".into())).await.unwrap(), "far");
    assert_eq!(far.hello().binary_hash, agent.hash);
    rt.shutdown().await;
}

/// Await all of `futures` concurrently, in order.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}
