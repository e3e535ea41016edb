pub fn run(_root: &std::path::Path, _which: Bench) -> anyhow::Result<()> {
    Ok(())
}
#[derive(clap::Subcommand)]
pub enum Bench {
    Storm,
}
