//! A worker's progress file and log are looked up through a handle on their directory, and a
//! file that inotify says nothing happened to since the last pass is not looked up at all.
//!
//! With a fleet of thousands of idle workers, the two `stat`s per worker per pass were half of
//! automon's CPU (issue 25). Each directory of the fleet's files carries one inotify watch
//! (one inotify descriptor in all, owned by [`Dirs`]); at the start of a pass the queue is
//! drained and the files it names are marked dirty. A dirty file is opened by its reader
//! through its directory's handle (`openat` of `w7.json` relative to an open `progress/` walks
//! one path component instead of every one from `/`), without a `stat` by name first, and the
//! version its handle has (`fstat`) is remembered; a clean one is answered with the remembered
//! version (or "missing"), without a system call, and its reader reuses what it read.
//!
//! Every way an event can be missed makes files dirty instead:
//!
//! - the first pass, and a watch (re)added: every file of that directory;
//! - the queue overflowed (`IN_Q_OVERFLOW`), or could not be read: every file;
//! - a watch gone or pointing elsewhere (`IN_IGNORED`, `IN_DELETE_SELF`, `IN_MOVE_SELF`,
//!   `IN_UNMOUNT`), or the directory's path now naming another directory (a parent renamed, a
//!   symlink retargeted: checked every pass with one `fstat` of its handle): every file of that
//!   directory, and the watch is added again by path before the files are looked at;
//! - a directory on a file system whose writes from other hosts inotify does not see (NFS,
//!   SMB, FUSE, Ceph, Lustre, …: [`inotify_sees_every_write`]), a directory that cannot be
//!   watched (no watches left), or no inotify at all: its files are `stat`ed every pass, as
//!   before;
//! - a file that is a symbolic link (its target may live in an unwatched directory; found out
//!   when the open of a dirty file, which does not follow links, fails): `stat`ed by name every
//!   pass until it is a file again;
//! - what inotify never reports (writes through `mmap`, a hard link in another directory): a
//!   sweep re-`stat`s every file at least once per [`SWEEP_PERIOD`], a few files each pass.
//!
//! The handles are opened anew every pass (a directory deleted and recreated is seen at the
//! next pass) and closed at its end; a directory that cannot be opened falls back to the full
//! path.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, open};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::progress::FileVersion;

/// Every file is `stat`ed at least once in this period even when inotify reported nothing, so
/// a change inotify never reports (a write through `mmap`, through a hard link in another
/// directory) is seen at most this late. The planner's own clocks are minutes long (`stuck_after`
/// is 5 minutes by default): a minute's delay changes no verdict's timing by much, and at a
/// 1-second interval the sweep costs about 1/60 of a full `stat` round per pass. The sweep is
/// spread over the period (a few files each pass), not one burst.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(60);

/// What can change a file's version or existence, seen from its directory. Not
/// `IN_CLOSE_WRITE`: every `write` and truncation already raises `IN_MODIFY`, and the one
/// change only a close would report (a write through `mmap`) is left to the sweep like the
/// `mmap` writes of a file never closed; it was two more events per worker per second from a
/// writer that rewrites its progress file and appends to its log.
const WATCH_MASK: AddWatchFlags = AddWatchFlags::IN_MODIFY
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// Events after which a watch is gone, or watches a directory the path no longer names.
const WATCH_LOST: AddWatchFlags = AddWatchFlags::IN_IGNORED
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_UNMOUNT);

/// Reads of the queue in one drain before giving up on it (and treating every file as dirty):
/// a read of [`EVENTS_BUFFER`] holds about 2,000 events, so this is far beyond the kernel's
/// default queue of 16,384; only writers faster than the drain get here.
const MAX_DRAIN_READS: usize = 1024;

/// The size of the buffer the inotify queue is read into: about 2,000 events of a 16-byte name.
const EVENTS_BUFFER: usize = 64 * 1024;

/// The events in what one `read` of an inotify descriptor returned, as (watch, mask, name):
/// each is a `struct inotify_event` (`wd`, `mask`, `cookie`, `len`, then `len` bytes of name
/// padded with NULs; inotify(7)). A record cut short (never from the kernel) ends the walk.
struct InotifyEvents<'a>(&'a [u8]);

impl<'a> Iterator for InotifyEvents<'a> {
    type Item = (i32, AddWatchFlags, Option<&'a OsStr>);

    fn next(&mut self) -> Option<Self::Item> {
        use std::os::unix::ffi::OsStrExt;
        const HEADER: usize = 16;
        let word = |at: usize| -> Option<[u8; 4]> { self.0.get(at..at + 4)?.try_into().ok() };
        let wd = i32::from_ne_bytes(word(0)?);
        let mask = AddWatchFlags::from_bits_truncate(u32::from_ne_bytes(word(4)?));
        let len = usize::try_from(u32::from_ne_bytes(word(12)?)).ok()?;
        let name = self.0.get(HEADER..HEADER.checked_add(len)?)?;
        self.0 = &self.0[HEADER + len..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        Some((
            wd,
            mask,
            (!name.is_empty()).then(|| OsStr::from_bytes(name)),
        ))
    }
}

/// A file as its directory (an index into [`Dirs`]) and its entry among the files.
#[derive(Debug, Clone)]
pub struct FileAt {
    dir: usize,
    file: usize,
}

/// The distinct directories of the fleet's files, their watches, and what is known of each
/// file since the last event about it.
#[derive(Debug, Default)]
pub struct Dirs {
    dirs: Vec<Dir>,
    files: Vec<FileState>,
    inotify: InotifyState,
    /// Which directories each watch is on (several paths may name one directory).
    by_wd: HashMap<i32, Vec<usize>>,
    /// The buffer the queue is read into (kept: one allocation, not one per drain).
    events: Vec<u8>,
    /// When the last pass began (for the sweep).
    last_pass: Option<Instant>,
    /// The next file the sweep marks dirty.
    sweep_next: usize,
    /// File-nanoseconds owed to the sweep: each pass adds files × elapsed; every
    /// [`SWEEP_PERIOD`] of it is one file marked dirty.
    sweep_owed: u128,
    /// Files looked at by [`OpenDirs::look`]: `stat`ed by name or left to their reader (tests
    /// count them).
    #[cfg(test)]
    stats: u64,
    /// Tests: act as if every watch were refused (no watches left).
    #[cfg(test)]
    refuse_watches: bool,
}

/// One directory of the fleet's files.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// Its files, by name.
    names: HashMap<OsString, usize>,
    watch: Watch,
    /// A debug line was written about why it is not watched (said once).
    said: bool,
}

/// Whether a directory's events can be trusted, for the directory its path named when it was
/// looked at (`id`: device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Not watched (never, the watch was lost, or it could not be added): added on the next
    /// pass, if it can be; meanwhile its files are `stat`ed every pass.
    None,
    /// Watched with this descriptor.
    Watched { wd: WatchDescriptor, id: (u64, u64) },
    /// On a file system where inotify does not see every write: never watched, its files are
    /// `stat`ed every pass (looked at again if the path comes to name another directory).
    Untrusted { id: (u64, u64) },
}

/// The inotify descriptor, made at the first pass.
#[derive(Debug, Default)]
enum InotifyState {
    /// Not tried yet.
    #[default]
    Untried,
    /// Ready.
    Ready(Inotify),
    /// Could not be made (out of instances or descriptors): tried again a [`SWEEP_PERIOD`]
    /// after this (and said once, at debug level).
    Unavailable(Instant),
}

/// What is known of one file.
#[derive(Debug)]
struct FileState {
    name: PathBuf,
    /// The version (or `None`, missing) a `stat` found after the last event about the file;
    /// `None` when dirty: it must be looked at again.
    known: Option<Option<FileVersion>>,
    /// It was a symbolic link when last looked at: `stat`ed by name every pass (its target
    /// may change in a directory nobody watches). A `Cell`: the open that finds it out
    /// ([`OpenDirs::open_changed`]) runs from a reader's shared borrow.
    link: std::cell::Cell<bool>,
}

impl Dirs {
    /// Where `path` is, registering its directory; `None` for a path without a file name or
    /// without a directory (it is then `stat`ed by its path every pass).
    pub fn locate(&mut self, path: &Path) -> Option<FileAt> {
        let name = path.file_name()?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty())?;
        let dir = match self.dirs.iter().position(|d| d.path == parent) {
            Some(i) => i,
            None => {
                self.dirs.push(Dir {
                    path: parent.to_path_buf(),
                    names: HashMap::new(),
                    watch: Watch::None,
                    said: false,
                });
                self.dirs.len() - 1
            }
        };
        let file = match self.dirs[dir].names.get(name) {
            Some(&f) => f,
            None => {
                self.files.push(FileState {
                    name: PathBuf::from(name),
                    known: None,
                    link: std::cell::Cell::new(false),
                });
                let f = self.files.len() - 1;
                self.dirs[dir].names.insert(name.to_os_string(), f);
                f
            }
        };
        Some(FileAt { dir, file })
    }

    /// Begins a pass: takes in what inotify reported since the last one, makes sure each
    /// directory is watched, and opens every directory.
    pub fn open(&mut self) -> OpenDirs<'_> {
        self.open_at(Instant::now())
    }

    fn open_at(&mut self, now: Instant) -> OpenDirs<'_> {
        self.ensure_inotify(now);
        self.drain();
        self.sweep(now);
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut fds = Vec::with_capacity(self.dirs.len());
        let mut trusted = Vec::with_capacity(self.dirs.len());
        for i in 0..self.dirs.len() {
            let fd = open(self.dirs[i].path.as_path(), flags, Mode::empty()).ok();
            trusted.push(fd.as_ref().is_some_and(|fd| self.watch(i, fd)));
            fds.push(fd);
        }
        OpenDirs {
            dirs: self,
            fds,
            trusted,
        }
    }

    /// Makes the inotify descriptor at the first pass (and again a while after it could not
    /// be made).
    fn ensure_inotify(&mut self, now: Instant) {
        match self.inotify {
            InotifyState::Ready(_) => return,
            InotifyState::Unavailable(at) if now.saturating_duration_since(at) < SWEEP_PERIOD => {
                return;
            }
            _ => {}
        }
        let first = matches!(self.inotify, InotifyState::Untried);
        self.inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => InotifyState::Ready(i),
            Err(e) => {
                if first {
                    tracing::debug!(error = %e, "no inotify: progress files and logs are stat'ed every pass");
                }
                InotifyState::Unavailable(now)
            }
        };
    }

    /// Reads every queued event (until the queue is empty) and marks what they name dirty.
    ///
    /// The queue is read into a 64 KiB buffer kept from one drain to the next, and each event
    /// is taken from it in place (`nix`'s reader reads 4 KiB at a time and copies each name):
    /// a writer that rewrites 2,000 progress files by rename and appends to 2,000 logs queues
    /// 10,000 events a second.
    fn drain(&mut self) {
        let mut reads = 0;
        let mut buf = std::mem::take(&mut self.events);
        buf.resize(EVENTS_BUFFER, 0);
        while let InotifyState::Ready(inotify) = &self.inotify {
            if reads == MAX_DRAIN_READS {
                tracing::debug!("inotify queue still not empty after {reads} reads");
                self.all_dirty();
                break;
            }
            reads += 1;
            match nix::unistd::read(inotify, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for (wd, mask, name) in InotifyEvents(&buf[..n]) {
                        self.on_event(wd, mask, name);
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    // Events may have been lost: nothing known can be trusted.
                    tracing::debug!(error = %e, "cannot read the inotify queue");
                    self.all_dirty();
                    break;
                }
            }
        }
        self.events = buf;
    }

    /// What one event means: the file it names is dirty; a directory-wide event makes every
    /// file of the directory dirty; a lost watch also forgets the watch (added again by path
    /// before this pass looks at the files); an overflow makes every file dirty.
    fn on_event(&mut self, wd: i32, mask: AddWatchFlags, name: Option<&OsStr>) {
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::trace!("inotify queue overflowed: every file is stat'ed");
            self.all_dirty();
            return;
        }
        if mask.intersects(WATCH_LOST) {
            let Some(dirs) = self.by_wd.remove(&wd) else {
                return;
            };
            // Moved away, the watch still exists (on a directory the path no longer names).
            if mask.contains(AddWatchFlags::IN_MOVE_SELF)
                && let InotifyState::Ready(inotify) = &self.inotify
                && let Some(Watch::Watched { wd, .. }) = dirs.first().map(|&d| self.dirs[d].watch)
            {
                let _ = inotify.rm_watch(wd);
            }
            for d in dirs {
                self.dirs[d].watch = Watch::None;
                self.dir_dirty(d);
            }
            return;
        }
        let Some(dirs) = self.by_wd.get(&wd) else {
            return;
        };
        for &d in dirs {
            match name {
                Some(name) => {
                    if let Some(&f) = self.dirs[d].names.get(name) {
                        self.files[f].known = None;
                    }
                }
                None => {
                    for &f in self.dirs[d].names.values() {
                        self.files[f].known = None;
                    }
                }
            }
        }
    }

    /// Marks the next few files dirty, so each is `stat`ed at least once per
    /// [`SWEEP_PERIOD`].
    fn sweep(&mut self, now: Instant) {
        let elapsed = self
            .last_pass
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last_pass = Some(now);
        let n = self.files.len();
        if n == 0 {
            return;
        }
        self.sweep_owed += elapsed.as_nanos() * n as u128;
        let period = SWEEP_PERIOD.as_nanos();
        let due = self.sweep_owed / period;
        if due >= n as u128 {
            self.sweep_owed = 0;
            self.all_dirty();
            return;
        }
        self.sweep_owed -= due * period;
        for _ in 0..due {
            self.sweep_next %= n;
            self.files[self.sweep_next].known = None;
            self.sweep_next += 1;
        }
    }

    /// Whether directory `i`'s events can be trusted this pass (its path names the directory
    /// its watch is on); watches it when it is not watched yet, or watches the directory its
    /// path names now. `fd` is this pass's handle on it.
    fn watch(&mut self, i: usize, fd: &OwnedFd) -> bool {
        let Ok(st) = fstat(fd) else {
            self.unwatch(i);
            return false;
        };
        let id = (st.st_dev, st.st_ino);
        match self.dirs[i].watch {
            Watch::Watched { id: w, .. } if w == id => return true,
            Watch::Untrusted { id: u } if u == id => return false,
            _ => {}
        }
        // Not watched, or the path names another directory now: whatever was known of its
        // files is from before the watch.
        self.unwatch(i);
        self.dir_dirty(i);
        let InotifyState::Ready(inotify) = &self.inotify else {
            return false;
        };
        if let Ok(fs) = nix::sys::statfs::fstatfs(fd) {
            let f_type = fs.filesystem_type().0 as u64;
            if !inotify_sees_every_write(f_type) {
                self.dirs[i].watch = Watch::Untrusted { id };
                self.say(
                    i,
                    &format!("file system type {f_type:#x}: inotify misses other hosts' writes"),
                );
                return false;
            }
        }
        #[cfg(test)]
        let refused = self.refuse_watches.then_some(Errno::ENOSPC);
        #[cfg(not(test))]
        let refused = None;
        let added = match refused {
            Some(e) => Err(e),
            None => inotify.add_watch(self.dirs[i].path.as_path(), WATCH_MASK),
        };
        let wd = match added {
            Ok(wd) => wd,
            Err(e) => {
                self.say(i, &format!("cannot watch it: {e}"));
                return false;
            }
        };
        // The watch is on the directory the path named a moment later than the handle: if
        // that is not the handle's, the path changed in between; try again next pass.
        let same = nix::sys::stat::stat(self.dirs[i].path.as_path())
            .is_ok_and(|now| (now.st_dev, now.st_ino) == id);
        if !same {
            if !self.by_wd.contains_key(&wd.as_raw()) {
                let _ = inotify.rm_watch(wd);
            }
            return false;
        }
        self.dirs[i].watch = Watch::Watched { wd, id };
        let on = self.by_wd.entry(wd.as_raw()).or_default();
        if !on.contains(&i) {
            on.push(i);
        }
        true
    }

    /// Forgets directory `i`'s watch, removing it unless another directory shares it.
    fn unwatch(&mut self, i: usize) {
        let Watch::Watched { wd, .. } = std::mem::replace(&mut self.dirs[i].watch, Watch::None)
        else {
            return;
        };
        let Some(on) = self.by_wd.get_mut(&wd.as_raw()) else {
            return;
        };
        on.retain(|&d| d != i);
        if on.is_empty() {
            self.by_wd.remove(&wd.as_raw());
            if let InotifyState::Ready(inotify) = &self.inotify {
                let _ = inotify.rm_watch(wd);
            }
        }
    }

    /// One debug line per directory about why it is not watched.
    fn say(&mut self, i: usize, why: &str) {
        let dir = &mut self.dirs[i];
        if !dir.said {
            dir.said = true;
            tracing::debug!(dir = %dir.path.display(), why, "directory not watched: its files are stat'ed every pass");
        }
    }

    fn dir_dirty(&mut self, i: usize) {
        for &f in self.dirs[i].names.values() {
            self.files[f].known = None;
        }
    }

    fn all_dirty(&mut self) {
        for f in &mut self.files {
            f.known = None;
        }
    }
}

/// False for a file system where inotify does not see every change: writes made by other
/// hosts (network and cluster file systems), FUSE (whose server may change files without
/// telling the kernel: sshfs, virtiofs, glusterfs, …), and pseudo file systems whose contents
/// change without writes. `f_type` is `statfs`'s magic number.
pub fn inotify_sees_every_write(f_type: u64) -> bool {
    /// Magic numbers (`linux/magic.h` and the file systems' own sources).
    const BLIND: &[u32] = &[
        0x6969,      // NFS
        0x517B,      // SMB
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x6573_5546, // FUSE
        0x00C3_6400, // Ceph
        0x0BD0_0BD0, // Lustre
        0x4750_4653, // GPFS (IBM Storage Scale)
        0x0102_1997, // 9p (v9fs)
        0x5346_414F, // AFS (OpenAFS)
        0x6B41_4653, // kAFS
        0x7375_7245, // Coda
        0x564C,      // NCP
        0x7461_636F, // OCFS2
        0x0116_1970, // GFS2
        0x2003_0528, // OrangeFS (PVFS2)
        0x1983_0326, // BeeGFS
        0xAAD7_AAEA, // PanFS
        0x786F_4256, // VirtualBox shared folders
        0x00C0_FFEE, // UML hostfs
        0x9FA0,      // proc
        0x6265_6572, // sysfs
    ];
    // The magic is 32 bits; some ABIs sign-extend it.
    let magic = (f_type & 0xFFFF_FFFF) as u32;
    !BLIND.contains(&magic)
}

/// The directories' handles for one pass, and the files' known versions.
#[derive(Debug)]
pub struct OpenDirs<'a> {
    dirs: &'a mut Dirs,
    fds: Vec<Option<OwnedFd>>,
    /// Per directory: its events can be trusted this pass.
    trusted: Vec<bool>,
}

impl OpenDirs<'_> {
    /// What is known of the file at `at` (or at `path` when its directory is not open) before
    /// it is opened: its version from memory when nothing happened to it since it was last
    /// looked at (in a watched directory); [`Seen::Changed`] when inotify said something did
    /// (the reader opens it with [`OpenDirs::open_changed`] and reports the version its handle
    /// has with [`OpenDirs::saw`]: no `stat` by name first, which at 2,000 workers whose files
    /// change every second was a seventh of automon's time); else its version from a `stat`
    /// (a directory whose events cannot be trusted, a symbolic link). `path` must be the file
    /// `at` names.
    pub fn look(&mut self, at: Option<&FileAt>, path: &Path) -> Seen {
        let Some((at, fd)) = at.and_then(|a| Some((a, self.fds.get(a.dir)?.as_ref()?))) else {
            #[cfg(test)]
            {
                self.dirs.stats += 1;
            }
            return Seen::Stated(super::progress::version(path));
        };
        let trusted = self.trusted.get(at.dir).copied().unwrap_or(false);
        let Some(file) = self.dirs.files.get_mut(at.file) else {
            return Seen::Stated(super::progress::version(path));
        };
        if trusted && !file.link.get() {
            if let Some(known) = file.known {
                return Seen::Unchanged(known);
            }
            #[cfg(test)]
            {
                self.dirs.stats += 1;
            }
            return Seen::Changed;
        }
        #[cfg(test)]
        {
            self.dirs.stats += 1;
        }
        // Without following a symbolic link first: a link's target may change in a directory
        // nobody watches, so a link is never answered from memory.
        let (version, remember) =
            match fstatat(fd, file.name.as_path(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st)
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK =>
                {
                    file.link.set(true);
                    let st = fstatat(fd, file.name.as_path(), AtFlags::empty()).ok();
                    (st.map(|s| file_version(&s)), false)
                }
                Ok(st) => {
                    file.link.set(false);
                    (Some(file_version(&st)), true)
                }
                // Only "not there" is remembered; another failure may not last.
                Err(e) => (None, e == Errno::ENOENT),
            };
        file.known = (trusted && remember).then_some(version);
        Seen::Stated(version)
    }

    /// Remembers the version (`None`: missing) that a reader's handle on a [`Seen::Changed`]
    /// file had, `fstat`ed after the open: until the next event about the file, it is
    /// answered from memory. Nothing is remembered of a file in a directory not trusted this
    /// pass, or of a symbolic link.
    pub fn saw(&mut self, at: Option<&FileAt>, version: Option<FileVersion>) {
        let Some(at) = at else {
            return;
        };
        if !self.trusted.get(at.dir).copied().unwrap_or(false) {
            return;
        }
        if let Some(file) = self.dirs.files.get_mut(at.file)
            && !file.link.get()
        {
            file.known = Some(version);
        }
    }

    /// The version of the file at `at` (or at `path`), as [`OpenDirs::look`] and, for a
    /// changed file, a reader's open and `fstat` find it (the tests' reader).
    #[cfg(test)]
    pub fn version(&mut self, at: Option<&FileAt>, path: &Path) -> Option<FileVersion> {
        match self.look(at, path) {
            Seen::Unchanged(v) | Seen::Stated(v) => v,
            Seen::Changed => {
                let found = match self.open_changed(at, path) {
                    Ok(f) => f
                        .metadata()
                        .ok()
                        .map(|m| Some(super::progress::version_of(&m))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(None),
                    Err(_) => None,
                };
                match found {
                    Some(v) => {
                        self.saw(at, v);
                        v
                    }
                    None => super::progress::version(path),
                }
            }
        }
    }
}

impl OpenDirs<'_> {
    /// Opens the file at `at` for reading through its directory's handle (`openat` with its
    /// name: no walk of the whole path for each changed file), or `path` when its directory is
    /// not open; as [`super::progress::open_quietly`] does (`O_NOATIME` when permitted, never
    /// blocking on a FIFO).
    ///
    /// # Errors
    /// The open's error.
    pub fn open(&self, at: Option<&FileAt>, path: &Path) -> std::io::Result<std::fs::File> {
        self.open_by_name(at, path, OFlag::empty())
    }

    /// Opens a [`Seen::Changed`] file as [`OpenDirs::open`] does, but without following a
    /// symbolic link: a link found here is marked so (and opened through), and from then on
    /// is `stat`ed by name every pass.
    ///
    /// # Errors
    /// The open's error.
    pub fn open_changed(&self, at: Option<&FileAt>, path: &Path) -> std::io::Result<std::fs::File> {
        match self.open_by_name(at, path, OFlag::O_NOFOLLOW) {
            Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => {
                if let Some(file) = at.and_then(|a| self.dirs.files.get(a.file)) {
                    file.link.set(true);
                }
                self.open(at, path)
            }
            opened => opened,
        }
    }

    /// The open of both: through the directory's handle by name, with `extra` flags, never
    /// blocking, `O_NOATIME` when permitted; by `path` when the directory is not open.
    fn open_by_name(
        &self,
        at: Option<&FileAt>,
        path: &Path,
        extra: OFlag,
    ) -> std::io::Result<std::fs::File> {
        let Some((fd, file)) =
            at.and_then(|a| Some((self.fds.get(a.dir)?.as_ref()?, self.dirs.files.get(a.file)?)))
        else {
            return super::progress::open_quietly(path);
        };
        let open = |flags: OFlag| nix::fcntl::openat(fd, file.name.as_path(), flags, Mode::empty());
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | extra;
        match open(flags | OFlag::O_NOATIME) {
            Err(Errno::EPERM) => open(flags),
            opened => opened,
        }
        .map(std::fs::File::from)
        .map_err(std::io::Error::from)
    }
}

/// What a pass knows of a file before it opens it (see [`OpenDirs::look`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Nothing happened to it since a reader last opened it (in a directory watched since):
    /// the version its handle had then (`None`: missing), from memory. What that reader read
    /// is what the file holds.
    Unchanged(Option<FileVersion>),
    /// Its version (`None`: missing) as a `stat` by name just found it: a directory whose
    /// events cannot be trusted, or a symbolic link. A file rewritten within one tick of the
    /// file system's clock keeps its version (see [`super::progress::SETTLED`]).
    Stated(Option<FileVersion>),
    /// Something happened to it since it was last looked at: open it, and say what version
    /// the handle has ([`OpenDirs::saw`]).
    Changed,
}

fn file_version(st: &FileStat) -> FileVersion {
    FileVersion {
        dev: st.st_dev,
        inode: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_ns: super::progress::nanos(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: super::progress::nanos(st.st_ctime, st.st_ctime_nsec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::progress::version;
    use std::io::Write;

    /// The fleet's files for a test: where each is, and its path.
    struct Fleet {
        dirs: Dirs,
        files: Vec<(Option<FileAt>, PathBuf)>,
    }

    impl Fleet {
        fn new(paths: &[PathBuf]) -> Self {
            let mut dirs = Dirs::default();
            let files = paths.iter().map(|p| (dirs.locate(p), p.clone())).collect();
            Self { dirs, files }
        }

        /// One pass at `now`: every file's version (checked against a `stat` of its path), and
        /// how many `stat`s the pass made.
        fn pass_at(&mut self, now: Instant) -> (Vec<Option<FileVersion>>, u64) {
            let before = self.dirs.stats;
            let mut open = self.dirs.open_at(now);
            let seen: Vec<_> = self
                .files
                .iter()
                .map(|(at, path)| open.version(at.as_ref(), path))
                .collect();
            drop(open);
            for ((_, path), v) in self.files.iter().zip(&seen) {
                assert_eq!(*v, version(path), "{} as a stat finds it", path.display());
            }
            (seen, self.dirs.stats - before)
        }

        /// A pass a moment after the last (no sweep due).
        fn pass(&mut self) -> (Vec<Option<FileVersion>>, u64) {
            let now = self.dirs.last_pass.unwrap_or_else(Instant::now);
            self.pass_at(now)
        }
    }

    /// False (and says so) when the test's temporary directory is on a file system inotify is
    /// not trusted on: the tests about skipped `stat`s cannot run there.
    fn watchable(dir: &Path) -> bool {
        let ok = nix::sys::statfs::statfs(dir)
            .is_ok_and(|s| inotify_sees_every_write(s.filesystem_type().0 as u64));
        if !ok {
            eprintln!(
                "{}: not a file system inotify is trusted on; skipped",
                dir.display()
            );
        }
        ok
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open for append");
        f.write_all(text.as_bytes()).expect("append");
    }

    /// A temporary directory with `progress/` holding `w1.json` and `w2.json`.
    fn two_files() -> (tempfile::TempDir, Fleet) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sub = tmp.path().join("progress");
        std::fs::create_dir(&sub).expect("mkdir");
        let paths = [sub.join("w1.json"), sub.join("w2.json")];
        for p in &paths {
            std::fs::write(p, "{\"checkpoint\": 1}\n").expect("write");
        }
        (tmp, Fleet::new(&paths))
    }

    #[test]
    fn a_file_seen_through_its_directory_has_the_version_its_full_path_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sub").join("w1.json");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(&file, "{\"checkpoint\": 1}\n").expect("write");
        let gone_path = dir.path().join("sub").join("w2.json");
        let mut dirs = Dirs::default();
        let at = dirs.locate(&file);
        let gone = dirs.locate(&gone_path);
        assert_eq!(dirs.dirs.len(), 1, "one handle per directory");
        let mut open = dirs.open();
        assert_eq!(open.version(at.as_ref(), &file), version(&file));
        assert!(open.version(at.as_ref(), &file).is_some());
        // Missing: none, like the full path.
        assert_eq!(open.version(gone.as_ref(), &gone_path), None);
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
        let mut open = dirs.open();
        std::fs::create_dir(dir.path().join("later")).expect("mkdir");
        std::fs::write(&file, "1").expect("write");
        assert!(open.version(at.as_ref(), &file).is_some());
    }

    #[test]
    fn an_unchanged_file_is_not_stated_again() {
        let (tmp, mut fleet) = two_files();
        let (first, stats) = fleet.pass();
        assert_eq!(stats, 2, "the first pass stats every file");
        if !watchable(tmp.path()) {
            return;
        }
        for _ in 0..3 {
            let (again, stats) = fleet.pass();
            assert_eq!(stats, 0, "nothing happened to either file");
            assert_eq!(again, first);
        }
    }

    #[test]
    fn an_appended_file_is_seen_at_the_next_pass_and_alone_is_stated() {
        let (tmp, mut fleet) = two_files();
        let (first, _) = fleet.pass();
        append(&fleet.files[0].1, "more\n");
        let (next, stats) = fleet.pass();
        assert_ne!(next[0], first[0]);
        assert_eq!(next[1], first[1]);
        if watchable(tmp.path()) {
            assert_eq!(stats, 1, "only the appended file");
        }
    }

    #[test]
    fn a_file_rewritten_by_rename_is_seen_at_the_next_pass() {
        let (tmp, mut fleet) = two_files();
        let (first, _) = fleet.pass();
        let tmp_file = tmp.path().join("progress").join("w1.json.tmp");
        std::fs::write(&tmp_file, "{\"checkpoint\": 2}\n").expect("write temp");
        std::fs::rename(&tmp_file, &fleet.files[0].1).expect("rename");
        let (next, stats) = fleet.pass();
        assert_ne!(next[0].map(|v| v.inode), first[0].map(|v| v.inode));
        if watchable(tmp.path()) {
            assert_eq!(stats, 1, "only the replaced file");
        }
    }

    #[test]
    fn a_deleted_file_is_missing_and_a_created_one_is_seen_at_the_next_pass() {
        let (tmp, mut fleet) = two_files();
        fleet.pass();
        std::fs::remove_file(&fleet.files[0].1).expect("rm");
        let (next, _) = fleet.pass();
        assert_eq!(next[0], None);
        // Missing is remembered, like a version.
        let (_, stats) = fleet.pass();
        if watchable(tmp.path()) {
            assert_eq!(stats, 0);
        }
        std::fs::write(&fleet.files[0].1, "{}").expect("create");
        let (next, _) = fleet.pass();
        assert!(next[0].is_some());
    }

    #[test]
    fn a_directory_deleted_and_recreated_between_passes_is_watched_again() {
        let (tmp, mut fleet) = two_files();
        let (first, _) = fleet.pass();
        let sub = tmp.path().join("progress");
        std::fs::remove_dir_all(&sub).expect("rm");
        std::fs::create_dir(&sub).expect("mkdir again");
        std::fs::write(&fleet.files[1].1, "{\"checkpoint\": 22}\n").expect("write");
        let (next, _) = fleet.pass();
        assert_eq!(next[0], None);
        assert_ne!(next[1], first[1]);
        if !watchable(tmp.path()) {
            return;
        }
        // Watched again: idle passes cost nothing, and a change is seen.
        assert_eq!(fleet.pass().1, 0);
        append(&fleet.files[1].1, "\n");
        let (again, stats) = fleet.pass();
        assert_eq!(stats, 1);
        assert_ne!(again[1], next[1]);
    }

    #[test]
    fn a_directory_moved_away_and_replaced_is_seen_at_the_next_pass() {
        let (tmp, mut fleet) = two_files();
        fleet.pass();
        let sub = tmp.path().join("progress");
        std::fs::rename(&sub, tmp.path().join("progress.old")).expect("mv");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(&fleet.files[0].1, "{}").expect("write");
        let (next, _) = fleet.pass();
        assert!(next[0].is_some());
        assert_eq!(next[1], None);
        // The old directory's files change: not these files any more.
        append(&tmp.path().join("progress.old/w2.json"), "x");
        if watchable(tmp.path()) {
            assert_eq!(fleet.pass().1, 0);
        }
    }

    #[test]
    fn a_parent_renamed_and_replaced_is_seen_though_the_watch_has_no_event() {
        // Renaming a parent sends nothing to the watch on `a/progress`: the pass's check of
        // what the path names finds the new directory.
        let tmp = tempfile::tempdir().expect("tempdir");
        let sub = tmp.path().join("a").join("progress");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let file = sub.join("w1.json");
        std::fs::write(&file, "1").expect("write");
        let mut fleet = Fleet::new(std::slice::from_ref(&file));
        let (first, _) = fleet.pass();
        std::fs::rename(tmp.path().join("a"), tmp.path().join("a.old")).expect("mv");
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(&file, "22").expect("write");
        let (next, stats) = fleet.pass();
        assert_eq!(stats, 1);
        assert_ne!(next[0], first[0]);
        if watchable(tmp.path()) {
            append(&tmp.path().join("a.old/progress/w1.json"), "x");
            assert_eq!(
                fleet.pass().1,
                0,
                "the old directory is not watched any more"
            );
            append(&file, "x");
            assert_eq!(fleet.pass().1, 1, "the new one is");
        }
    }

    #[test]
    fn a_retargeted_directory_symlink_is_seen_at_the_next_pass() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for r in ["r1", "r2"] {
            std::fs::create_dir(tmp.path().join(r)).expect("mkdir");
            std::fs::write(tmp.path().join(r).join("w1.json"), r).expect("write");
        }
        let link = tmp.path().join("current");
        std::os::unix::fs::symlink("r1", &link).expect("symlink");
        let file = link.join("w1.json");
        let mut fleet = Fleet::new(std::slice::from_ref(&file));
        let (first, _) = fleet.pass();
        let next_link = tmp.path().join("current.new");
        std::os::unix::fs::symlink("r2", &next_link).expect("symlink");
        std::fs::rename(&next_link, &link).expect("retarget");
        let (next, stats) = fleet.pass();
        assert_eq!(stats, 1);
        assert_ne!(next[0], first[0]);
    }

    #[test]
    fn a_file_that_is_a_symlink_is_stated_every_pass() {
        // Its target's directory is not watched: a change there sends no event.
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("elsewhere")).expect("mkdir");
        std::fs::create_dir(tmp.path().join("progress")).expect("mkdir");
        let target = tmp.path().join("elsewhere/w1.json");
        std::fs::write(&target, "1").expect("write");
        let file = tmp.path().join("progress/w1.json");
        std::os::unix::fs::symlink(&target, &file).expect("symlink");
        let mut fleet = Fleet::new(std::slice::from_ref(&file));
        let (first, _) = fleet.pass();
        append(&target, "2");
        let (next, stats) = fleet.pass();
        assert_eq!(stats, 1);
        assert_ne!(next[0], first[0]);
    }

    /// A changed file in a watched directory is opened by the reader, not `stat`ed by name
    /// first ([`Seen::Changed`]); the version its handle had is remembered until the next
    /// event about it.
    #[test]
    fn a_changed_file_is_left_to_its_reader_and_its_handles_version_remembered() {
        let (tmp, mut fleet) = two_files();
        if !watchable(tmp.path()) {
            return;
        }
        let (at, path) = fleet.files[0].clone();
        let look = |fleet: &mut Fleet| fleet.dirs.open().look(at.as_ref(), &path);
        assert_eq!(look(&mut fleet), Seen::Changed, "never looked at");
        let mut open = fleet.dirs.open();
        assert_eq!(open.look(at.as_ref(), &path), Seen::Changed);
        let handle = open.open_changed(at.as_ref(), &path).expect("open");
        let seen = crate::observe::progress::version_of(&handle.metadata().expect("fstat"));
        open.saw(at.as_ref(), Some(seen));
        drop(open);
        assert_eq!(look(&mut fleet), Seen::Unchanged(Some(seen)));
        append(&path, "more");
        assert_eq!(look(&mut fleet), Seen::Changed, "an event about it");
    }

    /// A file replaced by a symbolic link is found out by the open of a changed file (which
    /// does not follow links), and `stat`ed by name from then on; a link replaced by a file
    /// is answered from memory again.
    #[test]
    fn a_file_replaced_by_a_symlink_is_stated_every_pass_and_back_again() {
        let (tmp, mut fleet) = two_files();
        if !watchable(tmp.path()) {
            return;
        }
        fleet.pass();
        let path = fleet.files[0].1.clone();
        let target = tmp.path().join("target.json");
        std::fs::write(&target, "{}").expect("write");
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        assert_eq!(fleet.pass().1, 1, "the changed file");
        for _ in 0..2 {
            assert_eq!(fleet.pass().1, 1, "the link, every pass");
        }
        std::fs::remove_file(&path).expect("rm link");
        std::fs::write(&path, "{}").expect("write");
        fleet.pass();
        assert_eq!(fleet.pass().1, 0, "a file again: from memory");
    }

    /// The records of one read of the queue, names padded with NULs as the kernel pads them;
    /// a record cut short ends the walk.
    #[test]
    fn inotify_records_are_read_in_place() {
        let record = |wd: i32, mask: u32, name: &[u8], len: u32| {
            let mut r = Vec::new();
            r.extend_from_slice(&wd.to_ne_bytes());
            r.extend_from_slice(&mask.to_ne_bytes());
            r.extend_from_slice(&0u32.to_ne_bytes());
            r.extend_from_slice(&len.to_ne_bytes());
            r.extend_from_slice(name);
            r.resize(16 + len as usize, 0);
            r
        };
        let modify = AddWatchFlags::IN_MODIFY.bits();
        let mut buf = record(3, modify, b"w1.json", 16);
        buf.extend(record(4, AddWatchFlags::IN_DELETE_SELF.bits(), b"", 0));
        buf.extend(record(3, modify, b"w2.log", 16));
        let events: Vec<_> = InotifyEvents(&buf).collect();
        assert_eq!(
            events,
            [
                (3, AddWatchFlags::IN_MODIFY, Some(OsStr::new("w1.json"))),
                (4, AddWatchFlags::IN_DELETE_SELF, None),
                (3, AddWatchFlags::IN_MODIFY, Some(OsStr::new("w2.log"))),
            ]
        );
        let cut = &buf[..buf.len() - 4];
        assert_eq!(InotifyEvents(cut).count(), 2);
    }

    #[test]
    fn an_overflowed_queue_makes_every_file_dirty() {
        let (tmp, mut fleet) = two_files();
        fleet.pass();
        if !watchable(tmp.path()) {
            return;
        }
        let Watch::Watched { wd, .. } = fleet.dirs.dirs[0].watch else {
            panic!("watched: {:?}", fleet.dirs.dirs[0].watch);
        };
        fleet
            .dirs
            .on_event(wd.as_raw(), AddWatchFlags::IN_Q_OVERFLOW, None);
        assert_eq!(fleet.pass().1, 2);
        assert_eq!(fleet.pass().1, 0);
    }

    #[test]
    fn a_real_queue_overflow_makes_every_file_dirty() {
        // More events than the queue holds, none about the fleet's files (two other files
        // modified in turn, so the kernel cannot merge them): only the overflow event can
        // make `w1.json` dirty. Reads the queue's size; changes no setting.
        let Some(max) = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|m| *m <= 1 << 20)
        else {
            eprintln!("queue size unknown or huge; skipped");
            return;
        };
        let (tmp, mut fleet) = two_files();
        fleet.pass();
        if !watchable(tmp.path()) {
            return;
        }
        let sub = tmp.path().join("progress");
        let mut a = std::fs::File::create(sub.join("a")).expect("create");
        let mut b = std::fs::File::create(sub.join("b")).expect("create");
        for _ in 0..max / 2 + 16 {
            a.write_all(b"x").expect("write");
            b.write_all(b"x").expect("write");
        }
        assert_eq!(fleet.pass().1, 2, "every file after the overflow");
        assert_eq!(fleet.pass().1, 0);
    }

    #[test]
    fn a_lost_watch_makes_its_files_dirty_and_is_added_again() {
        let (tmp, mut fleet) = two_files();
        fleet.pass();
        if !watchable(tmp.path()) {
            return;
        }
        let Watch::Watched { wd, .. } = fleet.dirs.dirs[0].watch else {
            panic!("watched");
        };
        fleet
            .dirs
            .on_event(wd.as_raw(), AddWatchFlags::IN_IGNORED, None);
        assert_eq!(fleet.dirs.dirs[0].watch, Watch::None);
        assert_eq!(fleet.pass().1, 2, "every file of the directory");
        assert!(matches!(fleet.dirs.dirs[0].watch, Watch::Watched { .. }));
        assert_eq!(fleet.pass().1, 0);
        append(&fleet.files[0].1, "x");
        assert_eq!(fleet.pass().1, 1, "events arrive again");
    }

    #[test]
    fn a_directory_that_cannot_be_watched_is_stated_every_pass() {
        let (_tmp, mut fleet) = two_files();
        fleet.dirs.refuse_watches = true;
        for _ in 0..3 {
            assert_eq!(fleet.pass().1, 2);
        }
        append(&fleet.files[0].1, "x");
        let (next, _) = fleet.pass();
        assert_eq!(next[0], version(&fleet.files[0].1));
        // Watches available again: added at the next pass.
        fleet.dirs.refuse_watches = false;
        assert_eq!(fleet.pass().1, 2);
    }

    #[test]
    fn without_inotify_every_file_is_stated_every_pass() {
        let (_tmp, mut fleet) = two_files();
        fleet.dirs.inotify = InotifyState::Unavailable(Instant::now());
        for _ in 0..3 {
            assert_eq!(fleet.pass().1, 2);
        }
        assert!(fleet.dirs.by_wd.is_empty());
    }

    #[test]
    fn network_and_fuse_file_systems_are_never_trusted() {
        for magic in [
            0x6969_u64,            // NFS
            0xFF53_4D42,           // CIFS
            0xFFFF_FFFF_FF53_4D42, // CIFS, sign-extended
            0x6573_5546,           // FUSE
            0x00C3_6400,           // Ceph
            0x0BD0_0BD0,           // Lustre
            0x4750_4653,           // GPFS
            0x0102_1997,           // 9p
        ] {
            assert!(!inotify_sees_every_write(magic), "{magic:#x}");
        }
        for magic in [
            0xEF53_u64,  // ext4
            0x5846_5342, // XFS
            0x9123_683E, // Btrfs
            0x0102_1994, // tmpfs
            0x794C_7630, // overlayfs
            0x2FC1_2FC1, // ZFS
        ] {
            assert!(inotify_sees_every_write(magic), "{magic:#x}");
        }
    }

    #[test]
    fn the_sweep_stats_every_file_once_per_period_a_few_each_pass() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (0..6).map(|i| tmp.path().join(format!("w{i}"))).collect();
        for p in &paths {
            std::fs::write(p, "1").expect("write");
        }
        let mut fleet = Fleet::new(&paths);
        let t0 = Instant::now();
        assert_eq!(fleet.pass_at(t0).1, 6);
        if !watchable(tmp.path()) {
            return;
        }
        // A tenth of the period per pass: six files, 0.6 of a file per pass.
        let step = SWEEP_PERIOD / 10;
        let stats: Vec<u64> = (1..=10).map(|k| fleet.pass_at(t0 + step * k).1).collect();
        assert_eq!(
            stats.iter().sum::<u64>(),
            6,
            "each file once per period: {stats:?}"
        );
        assert!(
            stats.iter().all(|s| *s <= 1),
            "spread over the passes: {stats:?}"
        );
        // A long pause: everything at once.
        assert_eq!(fleet.pass_at(t0 + SWEEP_PERIOD * 3).1, 6);
    }

    #[test]
    fn a_path_without_a_directory_is_stated_by_its_path_every_pass() {
        let mut fleet = Fleet::new(&[PathBuf::from("no-such-file-in-the-working-directory")]);
        assert!(fleet.files[0].0.is_none());
        assert_eq!(fleet.pass().1, 1);
        assert_eq!(fleet.pass().1, 1);
    }
}
