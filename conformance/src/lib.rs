//! Conformance tooling: emulated devices that speak the real wire protocols to a running
//! gateway, and (later) transcript replay. Unlike the protocol crates this crate does IO: it is
//! a client of the gateway, the way real devices are.

pub mod apple;
