//! Types shared by the kernel side (`ebpf/`) and the user-space agent.
//!
//! `#![no_std]` so the eBPF programs can use it; the `user` feature adds what
//! only the agent needs.
#![no_std]
