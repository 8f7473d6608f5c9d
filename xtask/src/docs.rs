//! `cargo xtask docs`: builds pagewatch, then writes its man pages
//! (`pagewatch.1` and one per subcommand) and its bash, zsh, fish and
//! elvish completions, generated from the clap definitions by the hidden
//! `pagewatch generate` subcommand, and the JSON Schemas of its JSON lines,
//! into `target/docs/` (or `--out DIR`).

use std::path::PathBuf;

use clap::Args;

use crate::{build, cmd};

#[derive(Debug, Args)]
pub struct Options {
    /// Where to write `man/`, `completions/` and `schema/` (default
    /// target/docs).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    build::run()?;
    let out = opts
        .out
        .unwrap_or_else(|| cmd::workspace().join("target/docs"));
    let pagewatch = cmd::release_dir().join("pagewatch");
    cmd::step(&format!("man pages into {}", out.join("man").display()));
    cmd::run(
        std::process::Command::new(&pagewatch)
            .args(["generate", "man"])
            .arg(out.join("man")),
    )?;
    for shell in ["bash", "zsh", "fish", "elvish"] {
        cmd::step(&format!("{shell} completions"));
        cmd::run(
            std::process::Command::new(&pagewatch)
                .args(["generate", "completions", shell])
                .arg(out.join("completions")),
        )?;
    }
    let schemas = out.join("schema");
    std::fs::create_dir_all(&schemas)?;
    for of in ["top", "report"] {
        let path = schemas.join(format!("{of}.schema.json"));
        cmd::step(&format!(
            "JSON Schema of `{of}` lines into {}",
            path.display()
        ));
        std::fs::write(
            &path,
            cmd::output(std::process::Command::new(&pagewatch).args(["schema", of]))?,
        )?;
    }
    Ok(())
}
