//! The process service: `check` and `run` in local and SSH contexts, and no process left behind
//! by a timeout or a dropped call.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::Duration;

use hypha::process::{Command, Exit, Line, Stream};
use hypha::ErrorKind;
use util::*;

/// A scratch directory for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hypha-process-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The pid a command writes into the fifo at `path`.
async fn pid_in(path: &std::path::Path) -> u32 {
    read_fifo(path).await.trim().parse().unwrap()
}

#[tokio::test]
async fn check_returns_lines_and_the_exit_status_like_remoto() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let out = ctx.check(Command::shell("echo one; echo two; echo oops >&2; exit 3")).await.unwrap();
    assert_eq!(out.stdout, ["one", "two"]);
    assert_eq!(out.stderr, ["oops"]);
    assert_eq!(out.exit, Exit::Code(3));
    let out = ctx.check(Command::new(["ls", "/nonexistent/hypha"])).await.unwrap();
    assert!(out.stdout.is_empty() && out.stderr[0].contains("No such file"), "{out:?}");
    assert_eq!(out.exit, Exit::Code(2));
    // Environment, working directory and stdin.
    let cmd = Command::shell("cat; echo \"$HYPHA_TEST_VAR\"; pwd")
        .with_stdin("from stdin\n")
        .with_env("HYPHA_TEST_VAR", "set")
        .with_cwd("/");
    assert_eq!(ctx.check(cmd).await.unwrap().stdout, ["from stdin", "set", "/"]);
    // A death by signal is one.
    assert_eq!(ctx.check(Command::shell("kill -9 $$")).await.unwrap().exit, Exit::Signal(9));
    // Run logs its lines and returns the exit.
    assert_eq!(ctx.run(Command::shell("echo logged; exit 4")).await.unwrap(), Exit::Code(4));
    rt.shutdown().await;
}

#[tokio::test]
async fn a_missing_program_and_a_permission_error_name_host_and_program() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let host = ctx.hello().host;
    let err = ctx.check(Command::new(["/nonexistent/prog"])).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&host) && text.contains("/nonexistent/prog: no such program"), "{text}");
    assert_eq!(err.kind(), ErrorKind::Handler);
    let dir = scratch("noexec");
    let file = dir.join("not-a-program");
    std::fs::write(&file, "data").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = ctx.check(Command::new([file.to_str().unwrap()])).await.unwrap_err().to_string();
    assert!(err.contains("not-a-program: permission denied"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    // The context keeps working.
    exercise(&ctx).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_command_and_what_it_forked() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let dir = scratch("timeout");
    let pidfile = dir.join("child.pid");
    fifo(&pidfile);
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let call = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.check(Command::shell(script).with_timeout(Duration::from_secs(2))).await })
    };
    let forked = pid_in(&pidfile).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(gone_within(forked, Duration::from_secs(10)).await, "the forked child {forked} still runs");
    std::fs::remove_dir_all(&dir).unwrap();
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_kills_the_command_and_what_it_forked() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let dir = scratch("dropped");
    let pidfile = dir.join("child.pid");
    fifo(&pidfile);
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let call = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.check(Command::shell(script)).await })
    };
    let forked = pid_in(&pidfile).await;
    call.abort();
    assert!(gone_within(forked, Duration::from_secs(10)).await, "the forked child {forked} still runs");
    exercise(&ctx).await;
    std::fs::remove_dir_all(&dir).unwrap();
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_runs_over_ssh_and_via_a_hop() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let ctx = rt.start(lab.ssh("plain")).await.unwrap();
    assert_eq!(ctx.check(Command::new(["hostname"])).await.unwrap().stdout, ["lab-plain"]);
    let sudo = rt.start(hypha::Sudo::new("hypha-nopw")).via(&ctx).await.unwrap();
    let out = ctx.check(Command::new(["id", "-un"])).await.unwrap();
    assert_eq!(out.stdout, [lab.user.as_str()]);
    assert_eq!(sudo.check(Command::new(["id", "-un"])).await.unwrap().stdout, ["hypha-nopw"]);
    let err = sudo.check(Command::new(["no-such-program-hypha"])).await.unwrap_err().to_string();
    assert!(err.contains("lab-plain") && err.contains("no-such-program-hypha: no such program"), "{err}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_stream_in_order_of_arrival_and_dropping_the_stream_kills_the_command() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let line = |stream, text: &str| Line { stream, text: text.into() };
    // Each line is printed only once the one before has arrived (the test says so through a fifo).
    let dir = scratch("order");
    let go = dir.join("go");
    fifo(&go);
    let script = format!("echo a; read _ < {go}; echo b >&2; read _ < {go}; echo c; exit 5", go = go.display());
    let mut lines = ctx.lines(Command::shell(script)).await.unwrap();
    let mut seen = Vec::new();
    while let Some(l) = lines.next().await {
        seen.push(l);
        if seen.len() < 3 {
            write_fifo(&go, "\n").await;
        }
    }
    assert_eq!(seen, [line(Stream::Stdout, "a"), line(Stream::Stderr, "b"), line(Stream::Stdout, "c")]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(lines.exit().await.unwrap(), Exit::Code(5));
    // The first line comes while the command still runs; dropping the stream kills it.
    let mut lines = ctx.lines(Command::shell("echo $$; exec sleep 300")).await.unwrap();
    let pid: u32 = lines.next().await.unwrap().text.parse().unwrap();
    assert!(alive(pid));
    drop(lines);
    assert!(gone_within(pid, Duration::from_secs(10)).await, "the command {pid} still runs");
    // A reader that takes only some lines still gets the exit.
    let lines = ctx.lines(Command::shell("seq 1 100000")).await.unwrap();
    assert_eq!(lines.exit().await.unwrap(), Exit::Code(0));
    rt.shutdown().await;
}
