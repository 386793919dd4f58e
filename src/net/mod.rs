//! Shared network plumbing with no protocol knowledge.
