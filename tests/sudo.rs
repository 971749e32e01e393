//! sudo hops: from the controller, and from a context running as an ordinary user on a lab host.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use hypha::{Sudo, Whoami};
use util::*;

#[tokio::test]
async fn the_controller_sudos_to_another_user() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    // The tests run as root: sudo asks root for nothing.
    let ctx = rt.start(Sudo::new(lab.user.clone())).await.unwrap();
    assert_eq!(ctx.call(Whoami).await.unwrap().user, lab.user);
    exercise(&ctx).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_sudos_without_and_with_a_password() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hypha = rt.start(lab.ssh("plain")).await.unwrap();
    let nopw = rt.start(Sudo::new("hypha-nopw")).via(&hypha).await.unwrap();
    assert_eq!(nopw.call(Whoami).await.unwrap().user, "hypha-nopw");
    let pw = rt.start(Sudo::new("hypha-pw").with_password(lab.secret("password"))).via(&hypha).await.unwrap();
    assert_eq!(pw.call(Whoami).await.unwrap().user, "hypha-pw");
    exercise(&pw).await;
    // A password offered where none is asked for is never sent.
    let nopw2 = rt.start(Sudo::new("hypha-nopw").with_password("unused")).via(&hypha).await.unwrap();
    assert_eq!(nopw2.call(Echo("fine".into())).await.unwrap(), "fine");
    rt.shutdown().await;
}

#[tokio::test]
async fn sudo_failures_are_clear_and_quick() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hypha = rt.start(lab.ssh("plain")).await.unwrap();
    let cases = [
        (Sudo::new("hypha-pw").with_password("wrong-password-xyz"), "refused the password"),
        (Sudo::new("hypha-pw"), "wants a password"),
        // sudo checks the password before the policy: the right one, for a user hypha may not become.
        (Sudo::new("root").with_password(lab.secret("password")), "may not sudo to root"),
    ];
    for (method, expect) in cases {
        let started = Instant::now();
        let err = rt.start(method).via(&hypha).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}: {err}", started.elapsed());
        let text = err.to_string();
        assert!(text.contains(expect), "expected {expect:?}: {text}");
        assert!(!text.contains("wrong-password-xyz"), "the password leaked: {text}");
        let debug = format!("{err:?}");
        assert!(!debug.contains("wrong-password-xyz"), "the password leaked: {debug}");
    }
    // The context the attempts were made from is fine.
    assert_eq!(hypha.call(Echo("ok".into())).await.unwrap(), "ok");
    rt.shutdown().await;
}
