//! Writing a code fix safely: content hashes, timestamped backups that never collide, and atomic
//! replacement (temporary file in the same directory, fsync, rename, directory fsync) that keeps
//! the file's permission bits.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The patch hash: hex SHA-256 of the target's absolute path, a NUL byte, and the resulting
/// content. Two proposals that produce the same file are the same patch.
pub fn patch_hash(file: &Path, content: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(file.as_os_str().as_encoded_bytes());
    h.update([0u8]);
    h.update(content);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `original` to `dir/<file name>.<stamp>.<hash8>.bak` (or `….<n>.bak` with n = 1, 2, …
/// when that name exists), creating `dir`, and fsyncs it. `stamp` is e.g. `20261129T071512.123Z`;
/// `hash8` the first 8 hex digits of the new content's SHA-256.
pub fn write_backup(
    dir: &Path,
    file_name: &str,
    stamp: &str,
    hash8: &str,
    original: &[u8],
) -> io::Result<PathBuf> {
    crate::state::private::ensure_dir(dir)?;
    for n in 0u32.. {
        let name = if n == 0 {
            format!("{file_name}.{stamp}.{hash8}.bak")
        } else {
            format!("{file_name}.{stamp}.{hash8}.{n}.bak")
        };
        let path = dir.join(name);
        // Backups live in the state directory: 0600 like every file there.
        let f = crate::state::private::options()
            .write(true)
            .create_new(true)
            .open(&path);
        let mut f = match f {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        f.write_all(original)?;
        f.sync_all()?;
        sync_dir(dir);
        return Ok(path);
    }
    Err(io::Error::other("no free backup name"))
}

/// Replaces `path` by `content` atomically, with permission bits `perms`.
pub fn atomic_write(path: &Path, content: &[u8], perms: Permissions) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".automon-fix-")
        .tempfile_in(dir)?;
    tmp.write_all(content)?;
    tmp.as_file().set_permissions(perms)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Best-effort fsync of a directory (so a rename survives a crash); failures are not fatal.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn backups_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_backup(dir.path(), "w.py", "20261129T071512.123Z", "abcd1234", b"1").unwrap();
        let b = write_backup(dir.path(), "w.py", "20261129T071512.123Z", "abcd1234", b"2").unwrap();
        assert_eq!(
            a.file_name().unwrap(),
            "w.py.20261129T071512.123Z.abcd1234.bak"
        );
        assert_eq!(
            b.file_name().unwrap(),
            "w.py.20261129T071512.123Z.abcd1234.1.bak"
        );
        assert_eq!(fs::read(&a).unwrap(), b"1");
        assert_eq!(fs::read(&b).unwrap(), b"2");
    }

    #[test]
    fn atomic_write_keeps_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.py");
        fs::write(&f, "old").unwrap();
        fs::set_permissions(&f, Permissions::from_mode(0o750)).unwrap();
        let perms = fs::metadata(&f).unwrap().permissions();
        atomic_write(&f, b"new", perms).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn hashes_are_hex() {
        assert_eq!(sha256_hex(b"").len(), 64);
        assert_ne!(
            patch_hash(Path::new("/a"), b"x"),
            patch_hash(Path::new("/b"), b"x")
        );
    }
}
