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
        assert!(line.contains(", started in ") && line.contains(", ping "), "{line}");
    }
    let out = hypha(&["ping", "--json", "local"]);
    let pong: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(pong["pid"].as_u64().unwrap() > 0);
    assert!(pong["seconds"].as_f64().unwrap() > 0.0);
    assert!(pong["start_seconds"].as_f64().unwrap() > 0.0, "{pong}");
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
    // Here, and in the background process of --persist (whose round stops when its run goes).
    for persist in [None, Some("60s")] {
        let fifo_path = scratch.path("pid");
        let _ = std::fs::remove_file(&fifo_path);
        fifo(&fifo_path);
        let script = format!("echo $$ > {}; exec sleep 300", fifo_path.display());
        let mut args = vec!["exec", "local", "--shell", &script];
        if let Some(keep) = persist {
            args.splice(1..1, ["--persist", keep]);
        }
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hypha"))
            .args(&args)
            .env("HYPHA_PERSIST_DIR", scratch.path("sockets"))
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
        assert_eq!(status.code(), Some(130), "{persist:?}");
        assert!(gone_within(sleep, Duration::from_secs(10)).await, "{persist:?}: the remote sleep was killed");
    }
    let env = [("HYPHA_PERSIST_DIR", scratch.path("sockets"))];
    let out = hypha_env(&["exec", "--persist", "0", "local", "--", "true"], &[(env[0].0, &env[0].1)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
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

/// `hypha ARGS...` with `envs` set, run to its end.
fn hypha_env(args: &[&str], envs: &[(&str, &std::path::Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hypha"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A small tree: `tree/a` (a line), `tree/sub/b` (executable), `tree/sub/empty`.
fn small_tree(scratch: &Scratch) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tree = scratch.path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("sub/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(tree.join("sub/empty"), "").unwrap();
    tree
}

fn same_tree(a: &std::path::Path, b: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for rel in ["a", "sub/b", "sub/empty"] {
        assert_eq!(std::fs::read(a.join(rel)).unwrap(), std::fs::read(b.join(rel)).unwrap(), "{rel}");
        let mode = |p: &std::path::Path| std::fs::metadata(p.join(rel)).unwrap().permissions().mode();
        assert_eq!(mode(a), mode(b), "{rel}");
    }
}

#[test]
fn copy_sends_a_tree_and_fetch_brings_one_back_per_host() {
    let scratch = Scratch::new("cli-copy");
    let tree = small_tree(&scratch);
    let dest = scratch.path("copied");
    let out = hypha(&["copy", "--json", "local", tree.to_str().unwrap(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    same_tree(&tree, &dest);
    let moved: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!((moved["host"].as_str(), moved["files"].as_u64()), (Some("local"), Some(3)));

    let fetched = scratch.path("fetched");
    let out = hypha(&["fetch", "local[1-3]", tree.to_str().unwrap(), fetched.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "quiet when all went well");
    for host in ["local1", "local2", "local3"] {
        same_tree(&tree, &fetched.join(host).join("tree"));
    }
}

#[test]
fn a_copy_that_fails_names_the_host_and_the_path() {
    let scratch = Scratch::new("cli-copy-fails");
    let tree = small_tree(&scratch);
    let missing = scratch.path("no/such/dir/x");
    let out = hypha(&["copy", "local[1-2]", tree.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Hosts that failed alike fold into one line, which names the path and the cause.
    let err = stderr(&out);
    assert!(err.starts_with("hypha: failed: local[1-2]: "), "{err}");
    assert!(err.ends_with(&format!("{}: mkdir: No such file or directory (os error 2)\n", missing.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!scratch.path("no").exists(), "nothing made");

    let out =
        hypha(&["fetch", "local", scratch.path("nothing-here").to_str().unwrap(), scratch.path("f").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing-here"), "{}", stderr(&out));
}

/// `hypha shell ARGS...` with `input` on its stdin, run to its end.
fn shell(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hypha"))
        .arg("shell")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn shell_runs_each_line_on_the_same_contexts() {
    let out = shell(&["local[1-2]"], "echo $PPID\n\necho $PPID\nexit 3\n");
    assert_eq!(out.status.code(), Some(1), "the last line's status: {}", stderr(&out));
    let mut by_host: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in stdout(&out).lines() {
        let (host, pid) = line.split_once(": ").unwrap();
        by_host.entry(host.to_owned()).or_default().push(pid.to_owned());
    }
    assert_eq!(by_host.len(), 2, "{by_host:?}");
    for (host, pids) in &by_host {
        assert_eq!(pids.len(), 2, "{host}: {pids:?}");
        assert_eq!(pids[0], pids[1], "{host}: one agent for both lines");
    }
    assert_eq!(stderr(&out), "hypha: failed: local[1-2]: exited with code 3\n");
}

#[test]
fn shell_starts_a_host_again_on_the_next_line_after_its_agent_died() {
    // The second line's command kills its own agent.
    let out = shell(&["local1"], "echo $PPID\nkill -9 $PPID\necho $PPID\n");
    assert_eq!(out.status.code(), Some(0), "the last line's status: {}", stderr(&out));
    let text = stdout(&out);
    let pids: Vec<&str> = text.lines().map(|l| l.strip_prefix("local1: ").unwrap()).collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_ne!(pids[0], pids[1], "a new agent for the third line");
    let err = stderr(&out);
    assert!(err.starts_with("hypha: unreachable: local1: "), "the lost agent counts as unreachable: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn outdir_writes_a_file_per_host_and_follows_no_link() {
    let scratch = Scratch::new("cli-outdir");
    let (outdir, errdir) = (scratch.path("out"), scratch.path("err"));
    std::fs::create_dir_all(&outdir).unwrap();
    // A link planted where a host's file goes is refused, and what it points to is left alone.
    let victim = scratch.path("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&victim, outdir.join("local2")).unwrap();
    let args = ["exec", "-o", outdir.to_str().unwrap(), "-e", errdir.to_str().unwrap(), "local[1-2]"];
    let out = hypha(&[&args[..], &["--shell", "echo out; echo err >&2"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(outdir.join("local1")).unwrap(), "out\n");
    assert_eq!(std::fs::read_to_string(errdir.join("local1")).unwrap(), "err\n");
    assert_eq!(std::fs::read_to_string(errdir.join("local2")).unwrap(), "err\n");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    let err = stderr(&out);
    assert!(err.contains(&format!("hypha: failed: local2: writing {}", outdir.join("local2").display())), "{err}");
    // Lines still print as they come, prefixed.
    assert_eq!(sorted_lines(&out), ["local1: out", "local2: out"]);
}

#[tokio::test]
async fn persist_keeps_the_contexts_for_the_next_run() {
    let scratch = Scratch::new("cli-persist");
    let dir = scratch.path("sockets");
    let env = [("HYPHA_PERSIST_DIR", dir.as_path())];
    let pids = |out: &Output| {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
        sorted_lines(out)
    };
    let first = pids(&hypha_env(&["exec", "--persist", "60s", "local[1-2]", "--shell", "echo $PPID"], &env));
    assert_eq!(first.len(), 2);
    // The same hosts, the same options: the same agents answer.
    let again = pids(&hypha_env(&["exec", "--persist", "60s", "local[1-2]", "--shell", "echo $PPID"], &env));
    assert_eq!(again, first);
    // Other options of reach: other contexts.
    let other =
        pids(&hypha_env(&["exec", "--persist", "60s", "-t", "25", "local[1-2]", "--shell", "echo $PPID"], &env));
    assert_eq!(other.len(), 2);
    assert!(other.iter().all(|o| !first.contains(o)), "{other:?} {first:?}");
    let agent: u32 = first[0].split_once(": ").unwrap().1.parse().unwrap();
    let server = ppid(agent);
    assert_ne!(server, std::process::id(), "the agents are the background process's children");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    // A peer that sends a frame past the limit is dropped; the process serves on.
    let socket = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .unwrap();
    let mut hostile = tokio::net::UnixStream::connect(&socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut hostile, &u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut hostile, &mut rest));
    assert_eq!(read.await.expect("the process hangs up").unwrap(), 0);
    // `--persist 0`: this run is the last; the process and its agents end after it.
    let last = pids(&hypha_env(&["exec", "--persist", "0", "local[1-2]", "--shell", "echo $PPID"], &env));
    assert_eq!(last, first);
    assert!(gone_within(server, Duration::from_secs(20)).await, "the process ended");
    assert!(gone_within(agent, Duration::from_secs(5)).await, "its agents too");
    assert!(!socket.exists());
}

#[test]
fn persist_refuses_a_directory_others_may_enter() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("cli-persist-open");
    let dir = scratch.path("sockets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = hypha_env(&["exec", "--persist", "10s", "local", "--", "true"], &[("HYPHA_PERSIST_DIR", &dir)]);
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    assert!(stderr(&out).contains("lets others in"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing made there");
}

#[test]
fn a_terminal_gets_a_progress_line_and_a_pipe_does_not() {
    // `script` runs hypha on a pseudo-terminal of its own; its output is what the terminal shows.
    let bin = env!("CARGO_BIN_EXE_hypha");
    let out = Command::new("script")
        .args(["-qec", &format!("{bin} exec 'local[1-2]' -- true"), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains("answered: "), "{shown:?}");
    assert!(shown.ends_with("\r\x1b[K"), "cleared at the end: {shown:?}");
    // Piped: nothing but the answers (the other tests check stderr is empty).
    let out = hypha(&["exec", "local[1-2]", "--", "true"]);
    assert_eq!((stdout(&out), stderr(&out)), (String::new(), String::new()));
}

#[test]
fn via_starts_the_hosts_from_a_gateway_on_the_lab() {
    let Some(lab) = lab() else { return };
    let (key, known_hosts) = (lab.key(), lab.known_hosts());
    let reach = ["-l", &lab.user, "-i", key.to_str().unwrap(), "--known-hosts", known_hosts.to_str().unwrap()];
    // hop2 is reachable from hop1 alone.
    let targets = format!("{},{}", lab.host("hop2"), lab.host("plain"));
    let args = [&reach[..], &["--via", lab.host("hop1"), &targets, "--", "hostname"]].concat();
    let out = hypha(&[&["exec"][..], &args].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut want = vec![format!("{}: lab-hop2", lab.host("hop2")), format!("{}: lab-plain", lab.host("plain"))];
    want.sort();
    assert_eq!(sorted_lines(&out), want);

    // A gateway that cannot be reached fails its hosts, naming it.
    let args = [&reach[..], &["-t", "10", "--via", "127.0.0.1:1", lab.host("hop2"), "--", "true"]].concat();
    let out = hypha(&[&["exec"][..], &args].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("hypha: unreachable: {}: gateway 127.0.0.1:1: ", lab.host("hop2"))), "{err}");
}

#[test]
fn an_agent_build_that_is_not_there_is_a_usage_error() {
    let out = hypha(&["exec", "--agent", "aarch64=/no/such/hypha", "local", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--agent aarch64=/no/such/hypha"), "{}", stderr(&out));
}

/// A groups file in `scratch`, mode 0600.
fn groups_file(scratch: &Scratch, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = scratch.path("hypha.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn groups_from_a_file_name_hosts_and_give_them_parameters() {
    let scratch = Scratch::new("cli-groups");
    let file = groups_file(
        &scratch,
        r#"
[groups.pair]
hosts = "local[1-2]"

[groups.all]
groups = ["pair"]
hosts = "local3"
format = "%d=%o"
"#,
    );
    let file = file.to_str().unwrap();
    // Nested groups, set operations on them, and the group's format (the innermost group that sets
    // one; `pair` sets none, so `all`'s).
    let out = hypha(&["-c", file, "exec", "@all!local1", "--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted_lines(&out), ["local2=hi", "local3=hi"]);
    // The command line's format beats the group's; -c comes after the subcommand too.
    let out = hypha(&["exec", "-c", file, "--format", "%d:%s", "@pair", "--", "true"]);
    assert_eq!(sorted_lines(&out), ["local1:0", "local2:0"]);
    // The default file: $XDG_CONFIG_HOME/hypha/hypha.toml.
    std::fs::create_dir_all(scratch.path("xdg/hypha")).unwrap();
    std::fs::copy(file, scratch.path("xdg/hypha/hypha.toml")).unwrap();
    let out = hypha_env(&["exec", "-b", "@pair", "--", "echo", "hi"], &[("XDG_CONFIG_HOME", &scratch.path("xdg"))]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("local[1-2]"), "-b beats the group's format: {}", stdout(&out));
}

#[test]
fn a_group_sudo_applies_to_its_hosts_alone() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/usr/bin/sudo").exists() {
        eprintln!("skipped: needs root and sudo");
        return;
    }
    let scratch = Scratch::new("cli-groups-sudo");
    let file = groups_file(&scratch, "[groups.low]\nhosts = \"local1\"\nsudo = \"nobody\"\n");
    let out = hypha(&["-c", file.to_str().unwrap(), "exec", "local[1-2]", "--", "id", "-un"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sorted_lines(&out), ["local1: nobody", "local2: root"]);
}

#[test]
fn a_groups_file_that_is_wrong_or_others_may_write_is_a_usage_error() {
    use std::os::unix::fs::PermissionsExt as _;
    let scratch = Scratch::new("cli-groups-bad");
    let file = groups_file(&scratch, "[groups.a]\nhosts = \"local1\"\n");
    let path = file.to_str().unwrap();
    // A group nobody defined.
    let out = hypha(&["-c", path, "exec", "@b", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("@b: no such group"), "{}", stderr(&out));
    // Writable by others: refused, whatever it says.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = hypha(&["-c", path, "exec", "@a", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("{path}: writable by others")), "{}", stderr(&out));
    // A cycle, named with its place in the file.
    let file = groups_file(&scratch, "[groups.a]\nhosts = \"@b\"\n[groups.b]\nhosts = \"@a\"\n");
    let out = hypha(&["-c", file.to_str().unwrap(), "exec", "local", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("groups contain themselves: @a -> @b -> @a"), "{}", stderr(&out));
    // A file that is not there, named with -c.
    let out = hypha(&["-c", &scratch.path("none.toml").to_string_lossy(), "exec", "local", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[test]
fn groups_on_the_lab_give_user_key_and_gateway_per_host() {
    let Some(lab) = lab() else { return };
    let scratch = Scratch::new("cli-groups-lab");
    let key = lab.key();
    // hop2 is reachable from hop1 alone: its group says to start it from there.
    let file = groups_file(
        &scratch,
        &format!(
            r#"
[defaults]
user = "{user}"
identity = "{key}"

[groups.far]
hosts = "{hop2}"
via = "{hop1}"

[groups.lab]
groups = ["far"]
hosts = "{plain}"
"#,
            user = lab.user,
            key = key.display(),
            hop1 = lab.host("hop1"),
            hop2 = lab.host("hop2"),
            plain = lab.host("plain"),
        ),
    );
    let known_hosts = lab.known_hosts();
    let args = ["-c", file.to_str().unwrap(), "exec", "--known-hosts", known_hosts.to_str().unwrap()];
    let out = hypha(&[&args[..], &["@lab", "--", "hostname"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut want = vec![format!("{}: lab-hop2", lab.host("hop2")), format!("{}: lab-plain", lab.host("plain"))];
    want.sort();
    assert_eq!(sorted_lines(&out), want);
    // The command line beats the file: no such user, so neither host lets it in.
    let out = hypha(&[&args[..], &["-l", "hypha-nobody", "-t", "20", "@lab", "--", "true"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[tokio::test]
async fn ctrl_c_kills_the_commands_on_ssh_hosts_and_behind_a_gateway() {
    use tokio::io::AsyncBufReadExt as _;
    let Some(lab) = lab() else { return };
    let (key, known_hosts) = (lab.key(), lab.known_hosts());
    let targets = format!("{},{}", lab.host("plain"), lab.host("hop2"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hypha"))
        .args(["exec", "-l", &lab.user, "-i", key.to_str().unwrap(), "--known-hosts", known_hosts.to_str().unwrap()])
        .args(["--via", lab.host("hop1"), &targets, "--shell", "echo $$; exec sleep 300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Each host prints its shell's pid, which becomes the sleep (the lab's hosts share this
    // machine's pids: only their network and mounts are their own).
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut sleeps = Vec::new();
    while sleeps.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.expect("a pid").unwrap();
        let line = line.expect("hypha printed both pids");
        let pid: u32 = line.rsplit(": ").next().unwrap().parse().unwrap();
        assert!(alive(pid), "{line}");
        sleeps.push(pid);
    }
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("hypha exits").unwrap();
    assert_eq!(status.code(), Some(130));
    for pid in sleeps {
        assert!(gone_within(pid, Duration::from_secs(10)).await, "the sleep {pid} was killed on its host");
    }
}
