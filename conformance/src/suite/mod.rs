//! The conformance suite (`mdm-conformance`): transcripts of device ↔ gateway exchanges,
//! organised by spec section, replayed over the wire against any gateway or checked in process
//! through the protocol crates; raw captures decoded and round-tripped; a per-exchange report,
//! JUnit XML and a skip list where every entry has a reason. The format is documented in
//! `docs/conformance.md`.
//!
//! - [`format`]: `flow.json`, matchers, the skip list.
//! - [`check`]: bodies, paths (plist keys, XPath-like XML paths, JSON pointers), matchers,
//!   protocol decoding.
//! - [`run`]: the runners (wire, in process).
//! - [`captures`]: raw capture files.
//! - [`record`]: capture mode, emulator traffic written as transcripts.
//! - [`report`]: the text report and JUnit XML.

pub mod captures;
pub mod check;
pub mod format;
pub mod record;
pub mod report;
pub mod run;

pub use captures::run_captures;
pub use format::{LoadedFlow, SkipList, load_flows};
pub use record::Recorder;
pub use report::{Outcome, Report, Verdict};
pub use run::{WireTarget, run_in_process, run_wire};

/// Loads the flows of every directory in `dirs`, in order.
pub fn load_all(dirs: &[std::path::PathBuf]) -> Result<Vec<LoadedFlow>, String> {
    let mut all = Vec::new();
    for d in dirs {
        all.extend(load_flows(d)?);
    }
    Ok(all)
}
