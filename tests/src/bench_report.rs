//! The benchmark binaries' shared outputs: `cargo xtask bench` runs them in turn; the first
//! writes docs/benchmarks.{md,json} fresh and the later ones add their sections.

use anyhow::Result;
use serde_json::{json, Value};

/// Where a benchmark writes its results besides standard output (`cargo xtask bench` gives
/// docs/benchmarks.json and docs/benchmarks.md).
#[derive(clap::Args, Debug)]
pub struct ReportFiles {
    /// JSON file the results go into.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Markdown file the results' table goes into.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<String>,
}

/// Sets `key` of the JSON object in `path` (created if missing) to `value`.
pub fn add_json_section(path: &str, key: &str, value: Value) -> Result<()> {
    let mut all: Value = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(json!({}));
    all[key] = value;
    std::fs::write(path, serde_json::to_string_pretty(&all)? + "\n")?;
    Ok(())
}

/// Appends `text` to the Markdown file `path` (created if missing).
pub fn append_markdown(path: &str, text: &str) -> Result<()> {
    let mut all = std::fs::read_to_string(path).unwrap_or_default();
    all.push_str(text);
    std::fs::write(path, all)?;
    Ok(())
}
