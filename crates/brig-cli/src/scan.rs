//! `brig scan PATH|--git-range A..B`: the pre-push scanner as a command
//! (issue 5). The scanning itself is brig-scan's.

use std::path::PathBuf;

use brig_core::{Error, Result};

use crate::output::Out;

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// A directory (or file) to scan.
    pub path: Option<PathBuf>,
    /// Scan the commits of a git range (A..B) in the current repository instead.
    #[arg(long, value_name = "A..B")]
    pub git_range: Option<String>,
}

pub fn run(_a: &ScanArgs, _out: Out) -> Result<i32> {
    Err(Error::internal("brig scan is being built (issue 5)"))
}
