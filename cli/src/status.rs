//! `memlens status`.

use anyhow::Result;
use memlens_types::{
    api::{NoQuery, Status},
    status::CapabilityState,
};

use crate::{args::StatusArgs, Client};

pub async fn run(client: &Client, args: &StatusArgs) -> Result<()> {
    let status = client.request::<Status>(&NoQuery {}).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("memlens agent {} (pid {})", status.version, status.pid);
    let width = status
        .capabilities
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for cap in &status.capabilities {
        let state = match cap.state {
            CapabilityState::Ok => "ok",
            CapabilityState::Degraded => "degraded",
            CapabilityState::Unavailable => "unavailable",
        };
        println!("{:<width$}  {state:<11}  {}", cap.name, cap.detail);
    }
    Ok(())
}
