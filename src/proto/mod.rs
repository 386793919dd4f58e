//! The sans-IO protocol core: plain types and functions over bytes and time.
//! Nothing here opens a socket, reads a clock implicitly or spawns a task.
