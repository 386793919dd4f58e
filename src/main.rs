fn main() {
    std::process::exit(mcp_tunnel::cli::main());
}
