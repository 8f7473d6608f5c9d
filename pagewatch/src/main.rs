//! The pagewatch command: parse arguments, run the subcommand, print errors
//! as one sentence with each of their causes once and exit 1 (`record --
//! CMD` exits with the command's status). Everything else lives in the
//! library and in `cli/`.

mod cli;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (pagewatch top | head) is not an error.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("pagewatch: error: {}", message(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text
/// is already there: error types that name their source in their own
/// message (`cannot open X: {source}`) would otherwise print it twice.
fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let err = anyhow::Error::new(pagewatch::record::RecordError::Open {
            path: "/x.pwrec".into(),
            source: io(),
        });
        assert_eq!(
            message(&err),
            "cannot open /x.pwrec: No such file or directory (os error 2)"
        );
        let err = anyhow::Error::new(io()).context("reading /x");
        assert_eq!(
            message(&err),
            "reading /x: No such file or directory (os error 2)"
        );
    }

    /// The message `pagewatch report FILE` fails with.
    fn report_error(file: &std::path::Path) -> String {
        let cli = cli::Cli::try_parse_from(["pagewatch", "report", file.to_str().unwrap()]);
        message(&cli::run(cli.unwrap()).expect_err("report should fail"))
    }

    /// `pagewatch report` on a missing file and on a file that is not a
    /// recording: each cause once.
    #[test]
    fn report_errors_name_their_cause_once() {
        let missing = report_error(std::path::Path::new("/nonexistent.rec"));
        assert_eq!(
            missing,
            "cannot open /nonexistent.rec: No such file or directory (os error 2)"
        );
        let dir = std::env::temp_dir().join(format!("pw-main-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let foreign = dir.join("passwd");
        std::fs::write(&foreign, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let text = report_error(&foreign);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text.matches("not a pagewatch recording").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("root:x:0").count(), 1, "{text}");
        assert!(
            text.starts_with(&format!("{}: ", foreign.display())),
            "{text}"
        );
    }
}
