//! A fleet in under 20 lines: start a context on every host (local ones here, so it runs
//! anywhere; any method works), run a command on all of them, and name the ones that failed.
//!
//! ```sh
//! cargo run --release --example fleet            # eight local contexts
//! ```

use hypha::fleet::{Fleet, Summary};
use hypha::process::Command;
use hypha::{Handlers, Local, Method, Runtime};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let handlers = Handlers::new();
    hypha::run_if_agent(&handlers);
    let rt = Runtime::new(handlers)?;
    let fleet = Fleet::new(&rt).with_fanout(4);
    let hosts = (1..=8).map(|i| (format!("local{i}"), Box::new(Local::default()) as Box<dyn Method>));
    let started = Summary::new(&fleet.start(hosts).collect().await, |()| Ok(()));
    println!("up: {} of 8, unreachable: {:?}", started.ok.len(), started.unreachable);
    let answers = fleet.check(Command::shell("echo $$ on $(hostname)")).collect().await;
    for answer in &answers {
        if let hypha::fleet::Outcome::Done(out) = &answer.outcome {
            println!("{}: {}", answer.host, out.stdout.join(" "));
        }
    }
    let summary = Summary::of_checks(&answers);
    println!("ok: {}, failed: {:?}", summary.ok.len(), summary.failed);
    rt.shutdown().await;
    Ok(())
}
