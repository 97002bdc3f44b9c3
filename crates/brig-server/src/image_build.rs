//! `brig image build`: an image from a recipe (docs/AGENTS.md#image-recipes).
//!
//! A recipe is a few small text files: `recipe.toml` (the base, the layer's
//! place in the image, the build steps) and what its steps read (a
//! `package-lock.json` with each package's sha512 `integrity`, a
//! `requirements.txt` with `--hash=sha256:`), so that the bytes a build
//! installs are the pinned ones. The recipe's digest covers every file.
//!
//! The steps run in a brig session (the `host` image, a profile whose
//! egress allows only the package registries, through brig's proxy):
//! registry code (npm install scripts, pip) never runs on the host. What
//! they leave in `/workspace/layer` becomes one layer of a new immutable
//! image ([`brig_sandbox::image::build_layer`]) on the recipe's base: the
//! `host` image (the host's /usr bound read-only), or `debian`, a full
//! root of Debian 12 packages pinned by the recipe's `debian.lock`
//! ([`brig_sandbox::debian`]), fetched in the same session before the
//! steps run and checked against the lock by brig. The recipe's `check`
//! then runs in a session on the new image; only if it passes is the image
//! named by the recipe's digest (`recipe/NAME@sha256:...`): an agent preset
//! pins that name, so it runs what its recipe pins, or nothing. Every
//! session is destroyed whatever happens, and a failed build leaves no
//! image behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_core::event::Outcome;
use brig_core::exec::ExecRequest;
use brig_core::session::CreateSession;
use brig_core::SessionId;
use brig_core::{Error, ErrorKind, Result};
use brig_sandbox::debian;
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
    check: Option<String>,
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
    /// A shell command run in a session on the built image: it is named
    /// only if this exits 0 (e.g. the agent's version, on the image's own
    /// runtime).
    pub check: Option<String>,
    /// `base = "debian"`: the packages its root is made of.
    pub lock: Option<debian::Lock>,
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
        let lock = match raw.base.as_deref() {
            None | Some(image::HOST) => {
                if files.contains_key(debian::LOCK_FILE) {
                    return Err(Error::invalid(format!(
                        "the recipe has a {} but its base is not \"debian\"",
                        debian::LOCK_FILE
                    )));
                }
                None
            }
            Some("debian") => {
                let Some(text) = files.get(debian::LOCK_FILE) else {
                    return Err(Error::invalid(format!(
                        "{RECIPE_FILE}: base \"debian\" needs a {} in the recipe",
                        debian::LOCK_FILE
                    ))
                    .hint(debian::REGENERATE));
                };
                Some(debian::Lock::parse(text)?)
            }
            Some(b) => {
                return Err(Error::invalid(format!(
                    "{RECIPE_FILE}: base {b:?}: a base is \"host\" or \"debian\" (Debian 12 bookworm, amd64)"
                )))
            }
        };
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
            check: raw.check.filter(|c| !c.trim().is_empty()),
            lock,
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
    /// The session the recipe's check ran in, on the new image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_session: Option<String>,
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
                    check_session: None,
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
                profile: Some(profile.clone()),
                image: Some(image::HOST.to_string()),
                upload: Some(stage.path().join("recipe").display().to_string()),
                human: Some(human.clone()),
                ..Default::default()
            },
            None,
            caller.clone(),
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
    let checked = match destroyed {
        Ok(_) => check(&mgr, &recipe, &image, profile, human, caller, &say).await,
        Err(e) => Err(e.context(format!("destroying build session {id}"))),
    };
    let check_session = match checked {
        Ok(s) => s,
        Err(e) => {
            let (p, img) = (paths.clone(), image.clone());
            if let Err(d) = blocking(move || image::discard_built(&p, &img)).await {
                tracing::error!(error = %d, "could not discard an image that failed its check");
            }
            return Err(e);
        }
    };
    {
        let (p, img) = (paths.clone(), image.clone());
        blocking(move || image::name_built(&p, &img)).await?;
    }
    let ev = session_event(&info, "image.build", Outcome::Success).details(serde_json::json!({
        "image": image.name, "digest": image.digest, "base": image.base,
        "debian_lock": image.debian_lock, "check_session": check_session,
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
        check_session,
        steps,
        duration_ms: t0.elapsed().as_millis() as u64,
    })
}

/// One shell command in a build or check session, as a step: any exit but
/// 0 is the build's failure, with the output's tail and where to look.
#[allow(clippy::too_many_arguments)]
async fn sh(
    mgr: &Arc<Manager>,
    id: &SessionId,
    recipe: &Recipe,
    what: &str,
    command: &str,
    env: Vec<(String, String)>,
    stdin: Option<String>,
    deadline: Instant,
) -> Result<StepReport> {
    let left = deadline.saturating_duration_since(Instant::now());
    let t = Instant::now();
    let r = mgr
        .exec_buffered(
            id,
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), command.to_string()],
                env,
                cwd: Some("/workspace".into()),
                tty: None,
                timeout_ms: Some(left.as_millis().max(1) as u64),
                stdin,
            },
        )
        .await?;
    let report = StepReport {
        command: command.to_string(),
        exit_code: r.status.code,
        duration_ms: t.elapsed().as_millis() as u64,
    };
    if r.status.code == Some(0) {
        return Ok(report);
    }
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
    Err(Error::runtime(format!(
        "recipe {} {what} failed ({why}):\n{}\n{}",
        recipe.name,
        tail(&r.stdout),
        tail(&r.stderr)
    ))
    .hint(format!(
        "nothing was built; everything it did is in `brig journal show --session {id}`"
    )))
}

/// `base = "debian"`: fetch the locked .debs in the build session, check
/// them here against the lock, unpack them there, and stage the root on
/// this host before any recipe step (registry code) runs, so no step can
/// touch it. Returns the staged root and what ran.
async fn debian_base(
    mgr: &Arc<Manager>,
    id: &SessionId,
    recipe: &Recipe,
    lock: &debian::Lock,
    deadline: Instant,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(image::BaseRoot, Vec<StepReport>)> {
    let ws = brig_sandbox::workspace::session_dir(&mgr.paths().data_dir, id.as_str())
        .join("workspace")
        .join(".debian");
    let n = lock.packages.len();
    say(&format!(
        "fetching {n} Debian packages ({} MiB) from {}",
        lock.bytes() >> 20,
        debian::MIRROR
    ));
    let mut ran = vec![
        sh(
            mgr,
            id,
            recipe,
            &format!("download of its {n} Debian packages"),
            debian::FETCH,
            vec![],
            Some(lock.curl_config()),
            deadline,
        )
        .await
        .map_err(|e| {
            let hint = format!(
                "deb.debian.org keeps only the current version of each package: if one was superseded, {}",
                debian::REGENERATE
            );
            Error { hint: Some(hint), ..e }
        })?,
    ];
    let (l, debs) = (lock.clone(), ws.join("debs"));
    blocking(move || l.verify(&debs)).await?;
    say(&format!("unpacking {n} verified Debian packages"));
    ran.push(
        sh(
            mgr,
            id,
            recipe,
            "unpack of its Debian packages",
            debian::UNPACK,
            vec![],
            None,
            deadline,
        )
        .await?,
    );
    let (p, root, lock_digest) = (mgr.paths().clone(), ws.join("root"), lock.digest.clone());
    let base =
        blocking(move || image::stage_debian_root(&p, &root, debian::BASE, &lock_digest)).await?;
    ran.push(
        sh(
            mgr,
            id,
            recipe,
            "cleanup",
            "rm -rf .debian",
            vec![],
            None,
            deadline,
        )
        .await?,
    );
    Ok((base, ran))
}

/// The base, the steps, then the layer. Any failure is the build's.
async fn run(
    mgr: &Arc<Manager>,
    id: &SessionId,
    recipe: &Recipe,
    name: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(BuiltImage, Vec<StepReport>)> {
    let deadline = Instant::now() + recipe.timeout;
    let mut steps = Vec::new();
    let base = match &recipe.lock {
        Some(lock) => {
            let (b, ran) = debian_base(mgr, id, recipe, lock, deadline, say).await?;
            steps.extend(ran);
            Some(b)
        }
        None => None,
    };
    let n = recipe.steps.len();
    for (i, step) in recipe.steps.iter().enumerate() {
        say(&format!("step {}/{n}: {step}", i + 1));
        let what = format!("step {}/{n} `{step}`", i + 1);
        steps.push(
            sh(
                mgr,
                id,
                recipe,
                &what,
                step,
                recipe.env.clone(),
                None,
                deadline,
            )
            .await?,
        );
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
                base: base.as_ref(),
            },
        )
    })
    .await?;
    Ok((img, steps))
}

/// The recipe's check, in a fresh session on the built (not yet named)
/// image, under the build's profile: the image runs what it is for, with
/// nothing but its own files. Returns the session's id.
async fn check(
    mgr: &Arc<Manager>,
    recipe: &Recipe,
    img: &BuiltImage,
    profile: String,
    human: String,
    caller: brig_policy::HumanPrincipal,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Option<String>> {
    let Some(cmd) = &recipe.check else {
        return Ok(None);
    };
    say(&format!("checking the image: {cmd}"));
    let info = mgr
        .create_as(
            CreateSession {
                task: format!("image-check:{}", recipe.name),
                profile: Some(profile),
                image: Some(img.digest.clone()),
                human: Some(human),
                ..Default::default()
            },
            None,
            caller,
        )
        .await?;
    let id = info.id.clone();
    let deadline = Instant::now() + recipe.timeout.min(Duration::from_secs(300));
    let r = sh(
        mgr,
        &id,
        recipe,
        &format!("check `{cmd}`"),
        cmd,
        vec![],
        None,
        deadline,
    )
    .await;
    let destroyed = mgr
        .destroy(
            &id,
            DestroyMode::Graceful,
            if r.is_ok() {
                "image checked"
            } else {
                "image check failed"
            },
        )
        .await;
    r?;
    destroyed.map_err(|e| e.context(format!("destroying check session {id}")))?;
    Ok(Some(id.to_string()))
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
        // base = "debian" needs its lock, and a lock needs that base.
        let deb = "name = \"x\"\nbase = \"debian\"\nprefix = \"/opt/brig/x\"\ncheck = \"x --version\"\nsteps = [\"true\"]\n";
        let line = "dash 0.5.12-2 sha256:33ea40061da2f1a861ec46212b2b6a34f0776a049b1a3f0abce2fb8cb994258f 91848 debian/pool/main/d/dash/dash_0.5.12-2_amd64.deb\n";
        let mut f = files(deb);
        f.insert(debian::LOCK_FILE.into(), line.into());
        let r = Recipe::parse(f.clone()).unwrap();
        assert_eq!(r.lock.as_ref().unwrap().packages[0].name, "dash");
        assert_eq!(r.check.as_deref(), Some("x --version"));
        f.insert(
            debian::LOCK_FILE.into(),
            line.replace("sha256:33", "sha256:"),
        );
        assert!(Recipe::parse(f)
            .unwrap_err()
            .message
            .contains("debian.lock line 1"));
        let e = Recipe::parse(files(deb)).unwrap_err();
        assert!(e.message.contains("needs a debian.lock"), "{e}");
        let mut f = files(OK);
        f.insert(debian::LOCK_FILE.into(), line.into());
        assert!(Recipe::parse(f).is_err());
        let mut f = files(OK);
        f.insert("../x".into(), String::new());
        assert!(Recipe::parse(f).is_err());
        assert!(Recipe::parse(BTreeMap::new()).is_err());
    }
}
