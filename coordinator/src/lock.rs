//! One coordinator per data directory: an exclusive lock on `<data_dir>/lock`, held for as
//! long as the coordinator runs. Two coordinators on one directory would each keep their own
//! copy of the farm in memory and overwrite each other's rows; the second one refuses to
//! start instead. The lock is the kernel's (`flock`), so it goes away with the process, even
//! after `kill -9`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// The lock file's name inside the data directory.
const LOCK_FILE: &str = "lock";

/// Held while the coordinator runs; dropping it releases the directory.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `data_dir` (which must exist), or says that another coordinator
    /// holds it.
    pub(crate) fn acquire(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "another coordinator is already using the data directory {} (it holds {}); \
                 stop it first or give this one its own --data-dir",
                data_dir.display(),
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        // Who holds it, for a person looking at the directory; the lock is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let e = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another coordinator"), "{e}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
