// Small blocks come from sharded free lists before the system allocator
// (musl's takes one process-wide lock per call): ops::heap.
#[global_allocator]
static HEAP: mcp_tunnel::ops::heap::ShardedHeap = mcp_tunnel::ops::heap::ShardedHeap::new();

fn main() {
    std::process::exit(mcp_tunnel::cli::main());
}
