//! su hops, through a pty: from a context running as an ordinary user, and from the controller.

#![allow(clippy::unwrap_used)]

mod util;

use std::time::{Duration, Instant};

use hypha::{Su, Whoami};
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_sus_to_another_user_with_a_password() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hypha = rt.start(lab.ssh("plain")).await.unwrap();
    let target = rt.start(Su::new("hypha-pw").with_password(lab.secret("target_password"))).via(&hypha).await.unwrap();
    assert_eq!(target.call(Whoami).await.unwrap().user, "hypha-pw");
    // Binary data (the upload, the 8 MiB streams) crossed the terminal unchanged.
    exercise(&target).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn su_with_a_wrong_password_is_a_clear_error_within_seconds() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hypha = rt.start(lab.ssh("plain")).await.unwrap();
    let started = Instant::now();
    let err = rt.start(Su::new("hypha-pw").with_password("not-the-password-42")).via(&hypha).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let text = err.to_string();
    assert!(text.contains("su refused the password for hypha-pw"), "{text}");
    assert!(!text.contains("not-the-password-42"), "the password leaked: {text}");
    // Without a password, where su asks for one.
    let started = Instant::now();
    let err = rt.start(Su::new("hypha-pw")).via(&hypha).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(err.to_string().contains("su wants hypha-pw's password, and none was given"), "{err}");
    assert_eq!(hypha.call(Echo("ok".into())).await.unwrap(), "ok");
    rt.shutdown().await;
}

#[tokio::test]
async fn the_controller_sus_without_a_password_as_root() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let ctx = rt.start(Su::new(lab.user.clone())).await.unwrap();
    assert_eq!(ctx.call(Whoami).await.unwrap().user, lab.user);
    rt.shutdown().await;
}

#[tokio::test]
async fn su_built_with_every_builder_starts_and_its_program_is_the_one_named() {
    let Some(lab) = lab() else { return };
    let rt = runtime();
    let hypha = rt.start(lab.ssh("plain")).await.unwrap();
    let su = Su::new("hypha-pw")
        .with_password(lab.secret("target_password"))
        .with_program("/bin/su")
        .with_timeout(Duration::from_secs(30));
    let ctx = rt.start(su.clone()).via(&hypha).await.unwrap();
    assert_eq!(ctx.call(Whoami).await.unwrap().user, "hypha-pw");
    // A program that is not there is named in the error (and the password is not).
    let err = rt.start(su.with_program("/nonexistent/su")).via(&hypha).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent/su") && !text.contains(&lab.secret("target_password")), "{text}");
    rt.shutdown().await;
}
