//! `pagewatch schema top|report` prints the JSON Schema of the JSON lines
//! (see `pagewatch::output`); the hidden `pagewatch generate man DIR` and
//! `pagewatch generate completions SHELL DIR` write man pages and shell
//! completions generated from the clap definitions (`cargo xtask docs`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Subcommand};
use pagewatch::output::{self, SchemaOf};

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Whose lines: `top` (`top --json`) or `report` (`report --format json`).
    #[arg(value_enum, value_name = "PROGRAM")]
    of: SchemaOf,
}

pub fn schema(args: SchemaArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    std::io::stdout()
        .lock()
        .write_all(output::schema(args.of).as_bytes())?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: Generate,
}

#[derive(Debug, Subcommand)]
enum Generate {
    /// Man pages: pagewatch.1 and one per subcommand (pagewatch-top.1, ...).
    Man {
        /// Directory to write them into (created if missing).
        dir: PathBuf,
    },
    /// The completion script for SHELL.
    Completions {
        shell: clap_complete::Shell,
        /// Directory to write it into (created if missing).
        dir: PathBuf,
    },
}

/// `cmd` without its hidden subcommands (`generate`): clap_complete 4.5
/// offers hidden subcommands in its completions, clap_mangen does not.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    clap::Command::new("pagewatch")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let cmd = super::Cli::command();
    let (Generate::Man { dir } | Generate::Completions { dir, .. }) = &args.what;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = match &args.what {
        Generate::Man { dir } => clap_mangen::generate_to(cmd, dir).map(|()| dir.clone()),
        Generate::Completions { shell, dir } => {
            clap_complete::generate_to(*shell, &mut without_hidden(&cmd), "pagewatch", dir)
        }
    };
    let written = written.with_context(|| format!("writing into {}", dir.display()))?;
    println!("{}", written.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man page names every visible subcommand, and each has a page.
    #[test]
    fn the_man_page_mentions_every_subcommand() {
        let cmd = super::super::Cli::command();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut page)
            .unwrap();
        let page = String::from_utf8(page).unwrap();
        let dir = std::env::temp_dir().join(format!("pagewatch-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        clap_mangen::generate_to(cmd.clone(), &dir).unwrap();
        let subcommands: Vec<&str> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name())
            .collect();
        assert!(subcommands.len() >= 5, "{subcommands:?}");
        for name in &subcommands {
            assert!(
                page.contains(&format!("pagewatch\\-{name}(1)")),
                "pagewatch.1 does not mention {name}"
            );
            assert!(
                dir.join(format!("pagewatch-{name}.1")).is_file(),
                "no man page for {name}"
            );
        }
        assert!(
            !page.contains("generate"),
            "the hidden subcommand is in the page"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every shell's completions offer the visible subcommands and their
    /// options, not the hidden one.
    #[test]
    fn completions_offer_the_visible_subcommands_only() {
        let cmd = without_hidden(&super::super::Cli::command());
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), "pagewatch", &mut script);
            let script = String::from_utf8(script).unwrap();
            for word in ["snapshot", "record", "report", "interval", "expect"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
            assert!(!script.contains("generate"), "{shell} offers `generate`");
        }
    }
}
