//! The image recipes shipped with brig (`recipes/` in the repository,
//! built into the binary) and `brig image build` (docs/AGENTS.md#image-recipes).
//!
//! An agent preset pins its recipe's digest; the image built from it is
//! named by that digest (`recipe/NAME@sha256:...`), so the preset runs the
//! bytes its recipe pins, or refuses to run.

use std::collections::BTreeMap;
use std::path::Path;

use brig_core::{Error, Result};
use hyper::Method;
use serde_json::Value;

use crate::client::Client;
use crate::output::Out;
use crate::term::{short_digest, Spinner};

/// One recipe's files: (name, contents).
pub type Files = &'static [(&'static str, &'static str)];

pub const CLAUDE_CODE: Files = &[
    (
        "recipe.toml",
        include_str!("../../../recipes/claude-code/recipe.toml"),
    ),
    (
        "package.json",
        include_str!("../../../recipes/claude-code/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../recipes/claude-code/package-lock.json"),
    ),
    (
        "debian.lock",
        include_str!("../../../recipes/claude-code/debian.lock"),
    ),
];

pub const CODEX: Files = &[
    (
        "recipe.toml",
        include_str!("../../../recipes/codex/recipe.toml"),
    ),
    (
        "package.json",
        include_str!("../../../recipes/codex/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../recipes/codex/package-lock.json"),
    ),
    (
        "debian.lock",
        include_str!("../../../recipes/codex/debian.lock"),
    ),
];

pub const AIDER: Files = &[
    (
        "recipe.toml",
        include_str!("../../../recipes/aider/recipe.toml"),
    ),
    (
        "requirements.txt",
        include_str!("../../../recipes/aider/requirements.txt"),
    ),
    (
        "debian.lock",
        include_str!("../../../recipes/aider/debian.lock"),
    ),
];

pub fn to_map(files: Files) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_string()))
        .collect()
}

/// A recipe directory's files (plain files only, no dot files).
fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |e: std::io::Error| {
        Error::invalid(format!("recipe directory {}: {e}", dir.display()))
            .hint("pass a directory with recipe.toml and the files it pins")
    };
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(bad)? {
        let e = e.map_err(bad)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if !e.file_type().map_err(bad)?.is_file() {
            return Err(Error::invalid(format!(
                "recipe directory {}: {name} is not a plain file",
                dir.display()
            )));
        }
        let body = std::fs::read_to_string(e.path()).map_err(bad)?;
        out.insert(name, body);
    }
    Ok(out)
}

/// `brig image build DIR | --agent NAME [--profile P] [--rebuild]`.
pub async fn build(
    c: &Client,
    dir: Option<&Path>,
    agent: Option<&str>,
    profile: Option<String>,
    rebuild: bool,
    out: Out,
) -> Result<i32> {
    let files = match (dir, agent) {
        (_, Some(a)) => to_map(crate::agents::preset(a)?.recipe),
        (Some(d), None) => read_dir(d)?,
        (None, None) => {
            return Err(Error::invalid(
                "brig image build needs a recipe directory or --agent NAME",
            ))
        }
    };
    let body = brig_server::image_build::BuildRequest {
        files,
        profile,
        rebuild,
    };
    let shown = !out.json && !out.quiet;
    let message = std::sync::Arc::new(std::sync::Mutex::new("building the image".to_string()));
    let spin = Spinner::start_shared(message.clone(), shown);
    let r = c
        .call_lines(
            Method::POST,
            "/v1/images/build?progress=true",
            Some(&body),
            |v| {
                if let (Some(p), Ok(mut m)) = (v["progress"].as_str(), message.lock()) {
                    *m = p.chars().take(100).collect();
                }
            },
        )
        .await;
    spin.stop().await;
    let last = r?;
    if last["status"].as_u64() != Some(201) {
        return Err(serde_json::from_value::<Error>(last["error"].clone())
            .unwrap_or_else(|_| Error::internal(format!("unexpected answer from brig: {last}"))));
    }
    let img: &Value = &last["image"];
    if out.json {
        out.json_value(img);
        return Ok(0);
    }
    out.text(&format!(
        "{} {}",
        img["name"].as_str().unwrap_or("?"),
        img["digest"].as_str().unwrap_or("?")
    ));
    if img["cached"] == true {
        out.note("brig: already built from this recipe on this host (--rebuild to build again)");
    } else {
        let base = img["base"].as_str().unwrap_or("");
        // A `host` base is a digest; a Debian base says so, with its lock.
        let base = match img["debian_lock"].as_str() {
            Some(lock) => format!("on {base} (lock {})", short_digest(lock)),
            None => format!("on host {}", short_digest(base)),
        };
        out.note(&format!(
            "brig: built in {} s in session {} · layer {} · {} files, {} MiB · {base}{}",
            img["duration_ms"].as_u64().unwrap_or(0) / 1000,
            img["session"].as_str().unwrap_or("?"),
            short_digest(img["layer_digest"].as_str().unwrap_or("")),
            img["files"].as_u64().unwrap_or(0),
            img["bytes"].as_u64().unwrap_or(0) >> 20,
            img["check_session"]
                .as_str()
                .map(|c| format!(" · checked in session {c}"))
                .unwrap_or_default(),
        ));
    }
    Ok(0)
}
