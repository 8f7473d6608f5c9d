//! Builds the eBPF object (pagewatch-ebpf) with the nightly toolchain through
//! aya-build, as aya-template does; the collector embeds it with
//! `include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pagewatch"))`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed while locating pagewatch-ebpf")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "pagewatch-ebpf")
        .ok_or_else(|| anyhow!("pagewatch-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent directory for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
