//! The `hypha` command: run commands on many hosts at once (`hypha exec`), or start agents and
//! time a call to each (`hypha ping`). The program is its own agent: the contexts it starts, on
//! this machine or over SSH, are copies of this binary.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;

fn main() -> ExitCode {
    // First: in an agent, serve and exit.
    hypha::run_if_agent(&hypha::Handlers::new());
    hypha::bootstrap::init_logging();
    let args = match cli::args::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // `--help` and `--version` are no error.
            let code = if e.use_stderr() { cli::USAGE } else { cli::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hypha: starting the async runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<cli::Usage>().is_some() => {
            eprintln!("hypha: {e}");
            cli::USAGE
        }
        Err(e) => {
            eprintln!("hypha: {e:#}");
            70
        }
    };
    // Whatever still runs on a blocking thread does not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}
