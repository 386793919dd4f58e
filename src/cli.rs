//! Top-level command line: dispatch to `agent`, `relay`, `doctor`.

pub fn main() -> i32 {
    0
}
