//! `crossmesh serve`: wire sources -> registry -> push -> xDS server, plus the debug
//! HTTP server, bind the addresses of the mesh file, and shut down on SIGINT/SIGTERM.

use crate::config::MeshConfig;

/// Run the control plane until SIGINT or SIGTERM.
pub async fn serve(mesh: MeshConfig) -> anyhow::Result<()> {
    let _ = mesh;
    anyhow::bail!("`crossmesh serve` is not wired yet in this build")
}
