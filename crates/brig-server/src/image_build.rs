//! `brig image build`: an image from a recipe (docs/AGENTS.md#image-recipes).
//!
//! A recipe is a few small text files: `recipe.toml` (the base, the layer's
//! place in the image, the build steps) and what its steps read (a
//! `package-lock.json` with each package's sha512 `integrity`, a
//! `requirements.txt` with `--hash=sha256:`), so that the bytes a build
//! installs are the pinned ones. The recipe's digest covers every file.
//!
//! The steps run in a brig session (the base image, a profile whose egress
//! allows only the package registries, through brig's proxy): registry code
//! (npm install scripts, pip) never runs on the host. What they leave in
//! `/workspace/layer` becomes one layer of a new immutable image
//! ([`brig_sandbox::image::build_layer`]), named by the recipe's digest
//! (`recipe/NAME@sha256:...`): an agent preset pins that name, so it runs
//! what its recipe pins, or nothing. The session is destroyed whatever
//! happens, and a failed build leaves no image behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_core::event::Outcome;
use brig_core::exec::ExecRequest;
use brig_core::session::CreateSession;
use brig_core::SessionId;
use brig_core::{Error, ErrorKind, Result};
use brig_sandbox::image::{self, BuiltImage, LayerSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manager::{session_event, DestroyMode, Manager};

/// The recipe's own file.
pub const RECIPE_FILE: &str = "recipe.toml";
/// Where the steps leave the layer, under /workspace.
pub const LAYER_DIR: &str = "layer";
/// The profile a build runs under unless the request names one.
pub const BUILD_PROFILE: &str = "image-build";
const MAX_FILES: usize = 16;
const MAX_FILE_BYTES: usize = 4 << 20;
const DEFAULT_TIMEOUT: &str = "20m";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    #[serde(default)]
    base: Option<String>,
    prefix: String,
    #[serde(default)]
    path: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    steps: Vec<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// A parsed, checked recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub name: String,
    pub prefix: String,
    pub path: Vec<String>,
    pub env: Vec<(String, String)>,
    pub steps: Vec<String>,
    pub timeout: Duration,
    pub files: BTreeMap<String, String>,
    /// `sha256:` over every file (names and contents).
    pub digest: String,
}

/// The digest of a recipe's files: what an agent preset pins.
pub fn recipe_digest(files: &BTreeMap<String, String>) -> String {
    let mut m = String::from("brig-recipe v1\n");
    for (name, body) in files {
        m.push_str(&format!(
            "file {} sha256:{}\n",
            serde_json::to_string(name).unwrap_or_default(),
            hex::encode(Sha256::digest(body.as_bytes()))
        ));
    }
    format!("sha256:{}", hex::encode(Sha256::digest(m.as_bytes())))
}

/// The image name a recipe builds: its name and digest.
pub fn image_name(name: &str, digest: &str) -> String {
    format!("{}{name}@{digest}", image::RECIPE_PREFIX)
}

impl Recipe {
    pub fn parse(files: BTreeMap<String, String>) -> Result<Recipe> {
        if files.len() > MAX_FILES {
            return Err(Error::invalid(format!(
                "a recipe has at most {MAX_FILES} files"
            )));
        }
        for (n, body) in &files {
            let plain = !n.is_empty()
                && n.len() <= 64
                && !n.starts_with('.')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !plain {
                return Err(Error::invalid(format!(
                    "recipe file name {n:?} must be a plain name (letters, digits, . _ -)"
                )));
            }
            if body.len() > MAX_FILE_BYTES {
                return Err(Error::invalid(format!(
                    "recipe file {n} is over {} MiB",
                    MAX_FILE_BYTES >> 20
                )));
            }
        }
        let Some(text) = files.get(RECIPE_FILE) else {
            return Err(Error::invalid(format!("the recipe has no {RECIPE_FILE}"))
                .hint("a recipe is a directory with recipe.toml (docs/AGENTS.md#image-recipes)"));
        };
        let raw: RawRecipe = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("{RECIPE_FILE}: {}", e.message())))?;
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 32
            && raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(Error::invalid(format!(
                "{RECIPE_FILE}: name {:?} must be 1-32 of a-z, 0-9 and -",
                raw.name
            )));
        }
        match raw.base.as_deref() {
            None | Some(image::HOST) => {}
            Some(b) => {
                return Err(Error::invalid(format!(
                    "{RECIPE_FILE}: base {b:?}: only the `host` image can be a base yet"
                )))
            }
        }
        if raw.steps.is_empty() {
            return Err(Error::invalid(format!("{RECIPE_FILE}: no steps")));
        }
        for k in raw.env.keys() {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Error::invalid(format!(
                    "{RECIPE_FILE}: env name {k:?} is not valid"
                )));
            }
        }
        let timeout =
            brig_core::units::parse_duration(raw.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT))?;
        let digest = recipe_digest(&files);
        Ok(Recipe {
            name: raw.name,
            prefix: raw.prefix,
            path: raw.path,
            env: raw.env.into_iter().collect(),
            steps: raw.steps,
            timeout,
            files,
            digest,
        })
    }

    pub fn image_name(&self) -> String {
        image_name(&self.name, &self.digest)
    }
}

/// `POST /v1/images/build`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// The recipe's files by name, `recipe.toml` among them.
    pub files: BTreeMap<String, String>,
    /// The profile the build session runs under (default `image-build`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Build even if the image exists.
    #[serde(default)]
    pub rebuild: bool,
}

/// One step as it ran.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct StepReport {
    pub command: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
}

/// What a build made.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct BuildReport {
    #[serde(flatten)]
    pub image: BuiltImage,
    /// The image was already built from this recipe on this host: nothing ran.
    pub cached: bool,
    /// The build session (its journal has every command and connection).
    pub session: Option<String>,
    pub steps: Vec<StepReport>,
    pub duration_ms: u64,
}

/// A profile may build images only when its egress reaches nothing but
/// the package registries (and it enforces that).
fn check_profile(mgr: &Manager, name: &str) -> Result<()> {
    let p = mgr.config().profile(name).map_err(|e| {
        if name == BUILD_PROFILE {
            Error::not_found(format!("profile {name:?} does not exist"))
                .hint("add to brig.toml: [profiles.image-build] with egress = { presets = [\"registries\"] } (docs/AGENTS.md#image-recipes)")
        } else {
            e
        }
    })?;
    let e = &p.egress;
    let only_registries = e.mode == brig_egress::Mode::Enforce
        && e.allow.is_empty()
        && e.presets.iter().all(|p| p == "registries");
    if !only_registries {
        return Err(Error::new(
            ErrorKind::Denied,
            format!("profile {name:?} may reach more than the package registries"),
        )
        .hint("image builds run registry code: use a profile whose egress is only presets = [\"registries\"], mode enforce, no allow rules"));
    }
    Ok(())
}

/// Build `req`'s recipe (or find it built), telling `progress` each step.
pub async fn build(
    mgr: Arc<Manager>,
    caller: brig_policy::HumanPrincipal,
    human: String,
    req: BuildRequest,
    progress: Option<crate::git::Progress>,
) -> Result<BuildReport> {
    let say = |m: &str| {
        if let Some(p) = &progress {
            p(m)
        }
    };
    let t0 = Instant::now();
    let recipe = Recipe::parse(req.files)?;
    let name = recipe.image_name();
    let paths = mgr.paths().clone();
    if !req.rebuild {
        let (p, n) = (paths.clone(), name.clone());
        let found = blocking(move || image::built_info(&p, &n)).await;
        if let Ok(Some(b)) = found {
            if b.recipe_digest == recipe.digest {
                return Ok(BuildReport {
                    image: b,
                    cached: true,
                    session: None,
                    steps: vec![],
                    duration_ms: t0.elapsed().as_millis() as u64,
                });
            }
        }
    }
    let profile = req.profile.unwrap_or_else(|| BUILD_PROFILE.to_string());
    check_profile(&mgr, &profile)?;
    // The recipe's files, staged for the session's upload.
    let stage = {
        let (p, files) = (paths.clone(), recipe.files.clone());
        blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            let w = image::work_dir(&p)?;
            let dir = w.path().join("recipe");
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            for (n, body) in &files {
                std::fs::write(dir.join(n), body)?;
                std::fs::set_permissions(dir.join(n), std::fs::Permissions::from_mode(0o644))?;
            }
            Ok(w)
        })
        .await?
    };
    say(&format!("starting the build session ({profile})"));
    let info = mgr
        .create_as(
            CreateSession {
                task: format!("image-build:{}", recipe.name),
                profile: Some(profile),
                image: Some(image::HOST.to_string()),
                upload: Some(stage.path().join("recipe").display().to_string()),
                human: Some(human),
                ..Default::default()
            },
            None,
            caller,
        )
        .await?;
    drop(stage);
    let id = info.id.clone();
    let built = run(&mgr, &id, &recipe, &name, &say).await;
    let destroyed = mgr
        .destroy(
            &id,
            DestroyMode::Graceful,
            if built.is_ok() {
                "image built"
            } else {
                "image build failed"
            },
        )
        .await;
    let (image, steps) = built?;
    destroyed.map_err(|e| e.context(format!("destroying build session {id}")))?;
    let ev = session_event(&info, "image.build", Outcome::Success).details(serde_json::json!({
        "image": image.name, "digest": image.digest, "base": image.base,
        "layer_digest": image.layer_digest, "recipe_digest": image.recipe_digest,
        "prefix": image.prefix, "files": image.files, "bytes": image.bytes,
    }));
    if let Err(e) = mgr.db().write(move |s| s.append_event(&ev)).await {
        tracing::error!(error = %e, "could not journal an image build");
    }
    Ok(BuildReport {
        image,
        cached: false,
        session: Some(id.to_string()),
        steps,
        duration_ms: t0.elapsed().as_millis() as u64,
    })
}

/// The steps, then the layer. Any failure is the build's.
async fn run(
    mgr: &Arc<Manager>,
    id: &SessionId,
    recipe: &Recipe,
    name: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(BuiltImage, Vec<StepReport>)> {
    let deadline = Instant::now() + recipe.timeout;
    let mut steps = Vec::new();
    let n = recipe.steps.len();
    for (i, step) in recipe.steps.iter().enumerate() {
        say(&format!("step {}/{n}: {step}", i + 1));
        let left = deadline.saturating_duration_since(Instant::now());
        let t = Instant::now();
        let r = mgr
            .exec_buffered(
                id,
                ExecRequest {
                    argv: vec!["/bin/sh".into(), "-c".into(), step.clone()],
                    env: recipe.env.clone(),
                    cwd: Some("/workspace".into()),
                    tty: None,
                    timeout_ms: Some(left.as_millis().max(1) as u64),
                    stdin: None,
                },
            )
            .await?;
        steps.push(StepReport {
            command: step.clone(),
            exit_code: r.status.code,
            duration_ms: t.elapsed().as_millis() as u64,
        });
        if r.status.code != Some(0) {
            let tail = |s: &str| {
                let s = s.trim_end();
                let cut = s.len().saturating_sub(2000);
                let cut = (cut..=s.len())
                    .find(|&i| s.is_char_boundary(i))
                    .unwrap_or(s.len());
                s[cut..].to_string()
            };
            let why = if r.status.timed_out {
                format!("timed out (the recipe's timeout is {:?})", recipe.timeout)
            } else {
                format!("exit {}", r.status.shell_code())
            };
            return Err(Error::runtime(format!(
                "recipe {} step {}/{n} `{step}` failed ({why}):\n{}\n{}",
                recipe.name,
                i + 1,
                tail(&r.stdout),
                tail(&r.stderr)
            ))
            .hint(format!(
                "nothing was built; everything the step did is in `brig journal show --session {id}`"
            )));
        }
    }
    say("taking /workspace/layer as the image's layer");
    let source = brig_sandbox::workspace::session_dir(&mgr.paths().data_dir, id.as_str())
        .join("workspace")
        .join(LAYER_DIR);
    let (paths, name, recipe) = (mgr.paths().clone(), name.to_string(), recipe.clone());
    let img = blocking(move || {
        image::build_layer(
            &paths,
            &LayerSpec {
                name: &name,
                source: &source,
                prefix: &recipe.prefix,
                path: &recipe.path,
                recipe_digest: &recipe.digest,
            },
        )
    })
    .await?;
    Ok((img, steps))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("image build task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(recipe: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (RECIPE_FILE.to_string(), recipe.to_string()),
            ("package-lock.json".to_string(), "{}".to_string()),
        ])
    }

    const OK: &str = "name = \"x\"\nprefix = \"/opt/brig/x\"\nsteps = [\"true\"]\n";

    #[test]
    fn recipes_are_checked_and_their_digest_covers_every_file() {
        let r = Recipe::parse(files(OK)).unwrap();
        assert_eq!(r.image_name(), format!("recipe/x@{}", r.digest));
        assert_eq!(r.timeout, Duration::from_secs(20 * 60));
        let mut other = files(OK);
        other.insert("package-lock.json".into(), "{ }".into());
        assert_ne!(Recipe::parse(other).unwrap().digest, r.digest);
        for bad in [
            "name = \"X\"\nprefix = \"/opt/x/y\"\nsteps = [\"true\"]\n",
            "name = \"x\"\nprefix = \"/opt/x/y\"\nsteps = []\n",
            "name = \"x\"\nbase = \"ubuntu\"\nprefix = \"/opt/x/y\"\nsteps = [\"true\"]\n",
            "name = \"x\"\nprefix = \"/opt/x/y\"\nsteps = [\"true\"]\nnope = 1\n",
        ] {
            assert_eq!(
                Recipe::parse(files(bad)).unwrap_err().kind,
                ErrorKind::InvalidInput,
                "{bad}"
            );
        }
        let mut f = files(OK);
        f.insert("../x".into(), String::new());
        assert!(Recipe::parse(f).is_err());
        assert!(Recipe::parse(BTreeMap::new()).is_err());
    }
}
