//! A worker's progress file and log are looked up through a handle on their directory, opened
//! once per pass: `stat` of `progress/w7.json` relative to an open `progress/` walks one path
//! component instead of every one from `/`. With a fleet of thousands whose files did not
//! change, those two `stat`s per worker are most of a pass (the kernel's path walk was about a
//! quarter of an idle pass at 1,000 workers).
//!
//! The handles are opened anew every pass (a directory deleted and recreated is seen at the
//! next pass) and closed at its end; a directory that cannot be opened falls back to the full
//! path.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, fstatat};

use super::progress::FileVersion;

/// A file as its directory (an index into [`Dirs`]) and its name in it.
#[derive(Debug, Clone)]
pub struct FileAt {
    dir: usize,
    name: PathBuf,
}

/// The distinct directories of the fleet's files.
#[derive(Debug, Default)]
pub struct Dirs {
    dirs: Vec<PathBuf>,
}

impl Dirs {
    /// Where `path` is, registering its directory; `None` for a path without a file name.
    pub fn locate(&mut self, path: &Path) -> Option<FileAt> {
        let name = path.file_name()?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty())?;
        let dir = match self.dirs.iter().position(|d| d == parent) {
            Some(i) => i,
            None => {
                self.dirs.push(parent.to_path_buf());
                self.dirs.len() - 1
            }
        };
        Some(FileAt {
            dir,
            name: PathBuf::from(name),
        })
    }

    /// Opens every directory for one pass.
    pub fn open(&self) -> OpenDirs {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        OpenDirs {
            fds: self
                .dirs
                .iter()
                .map(|d| open(d.as_path(), flags, Mode::empty()).ok())
                .collect(),
        }
    }
}

/// The directories' handles for one pass.
#[derive(Debug)]
pub struct OpenDirs {
    fds: Vec<Option<OwnedFd>>,
}

impl OpenDirs {
    /// The version of the file at `at` (or at `path` when its directory is not open), if it
    /// exists. `path` must be the file `at` names.
    pub fn version(&self, at: Option<&FileAt>, path: &Path) -> Option<FileVersion> {
        let Some((fd, name)) = at.and_then(|a| Some((self.fds.get(a.dir)?.as_ref()?, &a.name)))
        else {
            return super::progress::version(path);
        };
        let st = fstatat(fd, name.as_path(), AtFlags::empty()).ok()?;
        Some(FileVersion {
            dev: st.st_dev,
            inode: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_seen_through_its_directory_has_the_version_its_full_path_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sub").join("w1.json");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(&file, "{\"checkpoint\": 1}\n").expect("write");
        let mut dirs = Dirs::default();
        let at = dirs.locate(&file);
        assert_eq!(dirs.dirs.len(), 1);
        let open = dirs.open();
        assert_eq!(
            open.version(at.as_ref(), &file),
            super::super::progress::version(&file)
        );
        assert!(open.version(at.as_ref(), &file).is_some());
        // Missing: none, like the full path.
        let gone = dirs.locate(&dir.path().join("sub").join("w2.json"));
        assert_eq!(dirs.dirs.len(), 1, "one handle per directory");
        assert_eq!(
            open.version(gone.as_ref(), &dir.path().join("sub/w2.json")),
            None
        );
    }

    #[test]
    fn a_directory_replaced_between_passes_is_seen_at_the_next_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("progress");
        let file = sub.join("w1.json");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(&file, "1").expect("write");
        let mut dirs = Dirs::default();
        let at = dirs.locate(&file);
        let before = dirs.open().version(at.as_ref(), &file).expect("exists");
        std::fs::remove_dir_all(&sub).expect("rm");
        std::fs::create_dir(&sub).expect("mkdir again");
        assert_eq!(
            dirs.open().version(at.as_ref(), &file),
            None,
            "the new directory is empty"
        );
        std::fs::write(&file, "22").expect("write again");
        let after = dirs
            .open()
            .version(at.as_ref(), &file)
            .expect("exists again");
        assert_ne!((before.inode, before.size), (after.inode, after.size));
    }

    #[test]
    fn a_directory_that_cannot_be_opened_falls_back_to_the_full_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("later").join("w1.json");
        let mut dirs = Dirs::default();
        let at = dirs.locate(&file);
        let open = dirs.open();
        std::fs::create_dir(dir.path().join("later")).expect("mkdir");
        std::fs::write(&file, "1").expect("write");
        assert!(open.version(at.as_ref(), &file).is_some());
    }
}
