//! Contexts that heal: a restart policy starts a lost context again through the same method, the
//! handle stays valid, calls made meanwhile wait for the new agent, and the events say what
//! happened.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::Duration;

use hypha::{ErrorKind, Event, Local, Restart, State, Whoami};
use util::*;

fn kill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// The events up to and including the first that `last` matches.
async fn events_until(events: &mut hypha::Events, last: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), events.next()).await.unwrap() {
        let done = last(&event);
        seen.push(event);
        if done {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_started_again_and_the_handle_keeps_working() {
    let rt = runtime();
    let ctx = rt.local().name("healing").restart(Restart::on_loss()).await.unwrap();
    let first = ctx.call(Whoami).await.unwrap().pid;
    let mut events = ctx.events();
    let mut lost = ctx.events();
    kill(first);
    events_until(&mut lost, |e| matches!(e, Event::Lost { .. })).await;
    // A call made while it restarts waits for the new agent and is answered there. (One in
    // flight when the link went fails: it may have run.)
    let answer = ctx.call(Echo("after the loss".into())).await.unwrap();
    assert_eq!(answer, "after the loss");
    let second = ctx.call(Whoami).await.unwrap().pid;
    assert_ne!(first, second);
    assert_eq!(ctx.hello().pid, second);
    assert_eq!(ctx.state(), State::Ready);
    let seen = events_until(&mut events, |e| matches!(e, Event::Ready { .. })).await;
    assert!(matches!(&seen[0], Event::Lost { .. }), "{seen:?}");
    assert!(matches!(seen[1], Event::Restarting { attempt: 1, .. }), "{seen:?}");
    assert!(matches!(seen[2], Event::Connecting { attempt: 1 }), "{seen:?}");
    assert!(matches!(&seen[3], Event::Ready { pid, .. } if *pid == second), "{seen:?}");
    // And again: a successful start resets the count of tries.
    let mut lost = ctx.events();
    kill(second);
    events_until(&mut lost, |e| matches!(e, Event::Lost { .. })).await;
    let third = ctx.call(Whoami).await.unwrap().pid;
    assert!(third != first && third != second);
    assert!(matches!(ctx.shutdown().await, State::ShutDown { .. }));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_a_lost_context_stays_lost() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    kill(ctx.hello().pid);
    assert!(matches!(ctx.closed().await, State::Disconnected { .. }));
    let err = ctx.call(Whoami).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoRoute | ErrorKind::Disconnected), "{err:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_that_cannot_start_again_fails_after_its_tries_and_says_why() {
    let rt = runtime();
    // A copy of this executable that disappears once the first agent runs.
    let dir = std::env::temp_dir().join(format!("hypha-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("agent");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let policy = Restart::OnLoss { backoff: Duration::from_millis(10), max_tries: 3 };
    let ctx = rt.start(Local::default().with_program(&copy)).restart(policy).await.unwrap();
    std::fs::remove_file(&copy).unwrap();
    let mut events = ctx.events();
    kill(ctx.hello().pid);
    let seen = events_until(&mut events, |e| matches!(e, Event::Failed { .. })).await;
    let tries = seen.iter().filter(|e| matches!(e, Event::Connecting { .. })).count();
    assert_eq!(tries, 3, "{seen:?}");
    let State::Failed(why) = ctx.closed().await else { panic!("{:?}", ctx.state()) };
    assert!(why.contains("agent"), "{why}");
    // Calls fail at once, naming the context and why.
    let err = ctx.call_within(Whoami, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(err.to_string().contains("could not be started again"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_during_a_restart_waits_no_longer_than_its_timeout() {
    let rt = runtime();
    let policy = Restart::OnLoss { backoff: Duration::from_secs(30), max_tries: 1 };
    let ctx = rt.local().restart(policy).await.unwrap();
    let mut events = ctx.events();
    kill(ctx.hello().pid);
    events_until(&mut events, |e| matches!(e, Event::Restarting { .. })).await;
    let err = ctx.call_within(Whoami, Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    // A shutdown between tries ends it at once.
    assert!(matches!(ctx.shutdown().await, State::ShutDown { .. }));
    assert!(matches!(ctx.closed().await, State::ShutDown { .. }));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_code_starts_a_child_of_its_own_context() {
    let rt = runtime();
    let parent = rt.local().await.unwrap();
    let child = parent.call(StartChild).await.unwrap();
    // Its id comes from the parent's block, and the controller reaches it through the parent.
    assert!(child > parent.id());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_started_via_another_restarts_through_the_same_parent() {
    let rt = runtime();
    let parent = rt.local().name("parent").await.unwrap();
    let child = rt.local().via(&parent).name("child").restart(Restart::on_loss()).await.unwrap();
    let first = child.call(Whoami).await.unwrap().pid;
    let mut events = child.events();
    kill(first);
    events_until(&mut events, |e| matches!(e, Event::Ready { .. })).await;
    let second = child.call(Whoami).await.unwrap().pid;
    assert_ne!(first, second);
    assert_eq!(children(parent.hello().pid), 1, "the new agent is the parent's child, the old one gone");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_via_context_whose_parent_is_gone_fails_after_its_tries_naming_the_parent() {
    let rt = runtime();
    let parent = rt.local().name("mortal-parent").await.unwrap();
    let policy = Restart::OnLoss { backoff: Duration::from_millis(10), max_tries: 2 };
    let child = rt.local().via(&parent).restart(policy).await.unwrap();
    kill(parent.hello().pid);
    let State::Failed(why) = child.closed().await else { panic!("{:?}", child.state()) };
    assert!(why.contains("mortal-parent"), "{why}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_own_no_route_error_is_its_answer_not_a_reason_to_wait() {
    let rt = runtime();
    let ctx = rt.local().restart(Restart::on_loss()).await.unwrap();
    // The handler calls on to a context that does not exist, and passes the error on.
    let err = ctx.call_within(Relay(4242), Duration::from_secs(60)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoRoute, "{err}");
    assert!(matches!(err, hypha::CallError::Remote(_)), "{err:?}");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_via_start_given_up_on_leaves_nothing_on_the_parent() {
    let rt = runtime();
    let parent = rt.local().name("parent").await.unwrap();
    let dir = std::env::temp_dir().join(format!("hypha-slow-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // An agent that starts only when the test says so (through a fifo), after the start has
    // been given up on; it says its pid first (which the agent keeps: the script execs it).
    let (pid_fifo, go) = (dir.join("pid"), dir.join("go"));
    fifo(&pid_fifo);
    fifo(&go);
    let slow = dir.join("slow-agent");
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "#!/bin/sh\necho $$ > {}\nread _ < {}\nexec {} \"$@\"\n",
        pid_fifo.display(),
        go.display(),
        exe.display()
    );
    std::fs::write(&slow, script).unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let start = rt.start(Local::default().with_program(&slow)).via(&parent).timeout(Duration::from_millis(300));
    let err = start.await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let pid: u32 = read_fifo(&pid_fifo).await.trim().parse().unwrap();
    assert_eq!(children(parent.hello().pid), 1, "the slow start runs on the parent");
    // The parent finishes that start on its own deadline, and the child is shut down at once.
    write_fifo(&go, "\n").await;
    assert!(gone_within(pid, Duration::from_secs(20)).await, "the child given up on still runs on the parent");
    assert_eq!(children(parent.hello().pid), 0);
    std::fs::remove_dir_all(&dir).unwrap();
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_end_once_the_context_has_ended() {
    let rt = runtime();
    let ctx = rt.local().await.unwrap();
    let mut events = ctx.events();
    assert!(matches!(ctx.shutdown().await, State::ShutDown { .. }));
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap() {
        seen.push(event);
    }
    assert_eq!(seen, [Event::ShutDown]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_via_child_waits_for_its_restarting_parent() {
    let rt = runtime();
    let slow = Restart::OnLoss { backoff: Duration::from_millis(800), max_tries: 3 };
    let parent = rt.local().name("parent").restart(slow).await.unwrap();
    let quick = Restart::OnLoss { backoff: Duration::from_millis(10), max_tries: 3 };
    let child = rt.local().via(&parent).name("child").restart(quick).await.unwrap();
    let mut events = child.events();
    kill(parent.hello().pid);
    let seen = events_until(&mut events, |e| matches!(e, Event::Ready { .. } | Event::Failed { .. })).await;
    assert!(matches!(seen.last(), Some(Event::Ready { .. })), "{seen:?}; the parent is {:?}", parent.state());
    assert_eq!(child.call(Whoami).await.unwrap().user, parent.call(Whoami).await.unwrap().user);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_outliving_its_runtime_fails_its_calls_at_once() {
    let ctx = {
        let rt = runtime();
        rt.local().restart(Restart::on_loss()).await.unwrap()
    };
    // The runtime is gone, and its actors with it.
    assert!(matches!(ctx.closed().await, State::Disconnected { .. }));
    let err = ctx.call_within(Whoami, Duration::from_secs(60)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_start_after_the_runtime_shut_down() {
    let rt = runtime();
    rt.shutdown().await;
    let err = rt.local().await.unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
}
