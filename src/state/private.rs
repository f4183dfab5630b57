//! Private files: the state directory (and each directory in it) is 0700 and every file in it
//! 0600, whatever the umask — it holds worker output, fix history and the applied manifest.
//!
//! An existing directory that is looser (e.g. 0755 from an older automon) is tightened with one
//! warning; a looser existing file is tightened when automon next opens it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of directories automon creates in or as its state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file automon writes in its state directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents, with the default mode) as a 0700 directory, or tightens
/// an existing one that others may read or enter (logging one warning when it does).
///
/// # Errors
/// The I/O error of creating the directory; failing to tighten one that another user owns is
/// logged, not an error.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
                    Ok(()) => tracing::warn!(
                        "{} was mode {mode:03o}; tightened to {DIR_MODE:03o} (it holds worker \
                         output and automon's state)",
                        dir.display()
                    ),
                    Err(e) => tracing::warn!(
                        "{} is mode {mode:03o} and cannot be tightened to {DIR_MODE:03o}: {e}",
                        dir.display()
                    ),
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => {}
                // Another process created it meanwhile: tighten that one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return ensure_dir(dir),
                Err(e) => return Err(e),
            }
            // The umask may have taken bits away from the owner too.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        }
        Err(e) => Err(e),
    }
}

/// Options that create a file 0600 (the umask can only take bits away); combine with
/// [`tighten`] for a file that may already exist.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Opens `path` for appending, creating it 0600, and tightens an existing looser file.
///
/// # Errors
/// The I/O error of opening the file.
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = options().create(true).append(true).read(true).open(path)?;
    tighten(&file)?;
    Ok(file)
}

/// Sets an open file to 0600 unless it already is.
///
/// # Errors
/// The I/O error of `fchmod`.
pub fn tighten(file: &File) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Writes `bytes` to a new or replaced file `path` with mode 0600.
///
/// # Errors
/// The I/O error of opening or writing.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    tighten(&f)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn a_new_state_dir_is_0700_and_its_files_0600_whatever_the_umask() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/.automon");
        // (The integration test runs automon under umask 000.)
        ensure_dir(&dir).expect("dir");
        let f = dir.join("events.log");
        drop(open_append(&f).expect("open"));
        write(&dir.join("x.diff"), b"x").expect("write");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&dir.join("x.diff")), 0o600);
    }

    #[test]
    fn an_existing_loose_dir_and_file_are_tightened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(".automon");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let f = dir.join("events.log");
        std::fs::write(&f, "old\n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        ensure_dir(&dir).expect("dir");
        drop(open_append(&f).expect("open"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read_to_string(&f).expect("read"), "old\n");
    }
}
