//! The `crossmesh` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    crossmesh::cli::main()
}
