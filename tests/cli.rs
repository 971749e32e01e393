//! The `hypha` command, run as its binary: local contexts, exit statuses, the output styles, a
//! lab host over SSH, and Ctrl-C.

#![allow(clippy::unwrap_used)]

mod util;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use util::*;

/// `hypha ARGS...`, run to its end.
fn hypha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hypha")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The lines of stdout, sorted (hosts answer in any order).
fn sorted_lines(out: &Output) -> Vec<String> {
    let mut lines: Vec<String> = stdout(out).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn exec_on_local_contexts_prefixes_each_line_with_its_host() {
    let out = hypha(&["exec", "local,localhost,local[1-2]", "--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted_lines(&out), ["local1: hi", "local2: hi", "local: hi", "localhost: hi"]);
    assert_eq!(stderr(&out), "", "no summary when all went well");
}

#[test]
fn each_local_name_is_a_context_of_its_own() {
    let out = hypha(&["exec", "local[1-10]", "--shell", "echo $PPID"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut agents: Vec<&str> = text.lines().filter_map(|l| l.split_once(": ").map(|(_, pid)| pid)).collect();
    assert_eq!(agents.len(), 10);
    agents.sort();
    agents.dedup();
    assert_eq!(agents.len(), 10, "ten agents, one per name");
}

#[test]
fn stderr_lines_go_to_stderr_prefixed() {
    let out = hypha(&["exec", "local", "--shell", "echo out; echo err >&2"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "local: out\n");
    assert_eq!(stderr(&out), "local: err\n");
}

#[test]
fn a_failing_command_exits_1_and_is_named_in_the_summary() {
    let out = hypha(&["exec", "local[1-2],local3", "--shell", "test $PPID = 0 || exit 7"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "hypha: failed: local[1-3]: exited with code 7\n");
}

#[test]
fn an_unreachable_host_exits_2_and_a_mix_exits_3() {
    // Nothing listens on port 1: the connection is refused at once.
    let out = hypha(&["exec", "-t", "20", "127.0.0.1:1,local", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("hypha: unreachable: 127.0.0.1:1: "), "{err}");

    let out = hypha(&["exec", "127.0.0.1:1,local", "--", "false"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("hypha: failed: local: exited with code 1\n"), "{err}");
    assert!(err.contains("hypha: unreachable: 127.0.0.1:1: "), "{err}");
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["exec", "local"][..],
        &["exec", "web[1-", "--", "true"],
        &["frobnicate"],
        &["exec", "-f", "0", "local", "true"],
    ] {
        let out = hypha(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(hypha(&["--help"]).status.code(), Some(0));
}

#[test]
fn gather_folds_hosts_with_the_same_output() {
    let out = hypha(&["exec", "-b", "local[1-3]", "--", "echo", "same"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "---------------\nlocal[1-3]\n---------------\nsame\n");

    // -B gathers stderr too; -b prints it prefixed, as it comes.
    let out = hypha(&["exec", "-B", "local[1-2]", "--shell", "echo o; echo e >&2"]);
    assert_eq!(stdout(&out), "---------------\nlocal[1-2]\n---------------\no\ne\n");
    let out = hypha(&["exec", "-b", "local[1-2]", "--shell", "echo o; echo e >&2"]);
    assert_eq!(stdout(&out), "---------------\nlocal[1-2]\n---------------\no\n");
    let mut err: Vec<&str> = std::str::from_utf8(&out.stderr).unwrap().lines().collect();
    err.sort();
    assert_eq!(err, ["local1: e", "local2: e"]);
}

#[test]
fn json_is_one_object_per_host() {
    let out = hypha(&["exec", "--json", "local[1-2],127.0.0.1:1", "--shell", "echo 'a \"quoted\" \\ line'; exit 4"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let mut hosts: Vec<serde_json::Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    hosts.sort_by_key(|h| h["host"].as_str().unwrap().to_owned());
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[0]["host"], "127.0.0.1:1");
    assert_eq!(hosts[0]["exit"], serde_json::Value::Null);
    assert_eq!(hosts[0]["unreachable"], true);
    assert!(hosts[0]["error"].as_str().unwrap().contains("127.0.0.1"));
    for (h, name) in hosts[1..].iter().zip(["local1", "local2"]) {
        assert_eq!(h["host"], name);
        assert_eq!(h["exit"], 4);
        assert_eq!(h["stdout"], serde_json::json!(["a \"quoted\" \\ line"]));
        assert_eq!(h["stderr"], serde_json::json!([]));
        assert_eq!(h["error"], serde_json::Value::Null);
    }
}

#[test]
fn format_as_tentakel() {
    let out = hypha(&["exec", "--format", "%d %s", "local[1-2]", "--shell", "exit 3"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(sorted_lines(&out), ["local1 3", "local2 3"]);

    let out = hypha(&["exec", "--format", "[%d] 100%% %o (%t s)", "local", "--", "echo", "hi"]);
    let line = stdout(&out);
    assert!(line.starts_with("[local] 100% hi ("), "{line}");
    assert!(line.ends_with(" s)\n"), "{line}");
}

#[test]
fn ping_prints_each_agent_and_its_latency() {
    let out = hypha(&["ping", "local[1-2]"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = sorted_lines(&out);
    assert_eq!(lines.len(), 2);
    for (line, host) in lines.iter().zip(["local1", "local2"]) {
        assert!(line.starts_with(&format!("{host}: pid ")), "{line}");
        assert!(line.contains(", ping "), "{line}");
    }
    let out = hypha(&["ping", "--json", "local"]);
    let pong: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(pong["pid"].as_u64().unwrap() > 0);
    assert!(pong["seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn exec_over_ssh_on_a_lab_host() {
    let Some(lab) = lab() else { return };
    let target = format!("{}@{}", lab.user, lab.host("plain"));
    let (key, known_hosts) = (lab.key(), lab.known_hosts());
    for method in ["ssh", "openssh"] {
        let out = hypha(&[
            "exec",
            &target,
            "--method",
            method,
            "-i",
            key.to_str().unwrap(),
            "--known-hosts",
            known_hosts.to_str().unwrap(),
            "--",
            "hostname",
        ]);
        assert_eq!(out.status.code(), Some(0), "{method}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{target}: lab-plain\n"), "{method}");
    }
}

#[tokio::test]
async fn ctrl_c_kills_the_remote_commands_and_exits_130() {
    let scratch = Scratch::new("cli-ctrl-c");
    let fifo_path = scratch.path("pid");
    fifo(&fifo_path);
    let script = format!("echo $$ > {}; exec sleep 300", fifo_path.display());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hypha"))
        .args(["exec", "local", "--shell", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The sleep runs once its shell has written its pid (it execs the sleep right after).
    let sleep: u32 = read_fifo(&fifo_path).await.trim().parse().unwrap();
    assert!(alive(sleep));
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("hypha exits").unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(gone_within(sleep, Duration::from_secs(10)).await, "the remote sleep was killed");
}

#[test]
fn sudo_hops_on_each_host() {
    // As root, sudo asks no password; elsewhere this needs a sudoers entry the test cannot make.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/usr/bin/sudo").exists() {
        eprintln!("skipped: needs root and sudo");
        return;
    }
    let out = hypha(&["exec", "--sudo=nobody", "local[1-2]", "--", "id", "-un"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted_lines(&out), ["local1: nobody", "local2: nobody"]);
}
