//! `httptp demo`: placeholder until written below.
use crate::args::DemoFlags;

pub(crate) async fn run(_flags: DemoFlags) -> anyhow::Result<()> {
    anyhow::bail!("demo: not built yet")
}
