//! `memlens status`.

use std::path::Path;

use anyhow::Result;

use super::StatusArgs;
use crate::api::{client, CapabilityState, StatusResponse};

pub async fn run(socket: &Path, args: &StatusArgs) -> Result<()> {
    let status: StatusResponse = client::get(socket, "/v1/status").await?;
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
