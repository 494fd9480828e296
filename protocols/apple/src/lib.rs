//! Apple MDM protocol (in progress).
