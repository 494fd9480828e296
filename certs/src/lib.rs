//! Device identity (in progress).
