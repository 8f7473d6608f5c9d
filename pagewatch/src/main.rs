//! The pagewatch command: parse arguments, run the subcommand, print errors
//! as one sentence with their causes and exit non-zero. Everything else
//! lives in the library and in `cli/`.

mod cli;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (pagewatch top | head) is not an error.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("pagewatch: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
