//! Descriptors automon inherited from whoever started it. A caller's open file or pipe (a
//! shell's `3>file`, a CI runner's status pipe) is not automon's to keep: held by the loop and
//! by every worker it starts, it would keep a pipe from closing — anything waiting for its end
//! would hang until the last worker exits. The loop closes every descriptor above 2 that it
//! inherited before opening any of its own (Rust opens its own with `O_CLOEXEC`, so workers
//! then get stdin, stdout and stderr only).

/// Closes every open descriptor above 2 (listed from `/proc/self/fd`); returns how many were
/// closed. Call first thing, before anything the process opens itself.
pub fn close_inherited() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    // Collected first: the directory's own descriptor is open while it is read.
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    // The listing's descriptor is closed now; closing it again fails with EBADF, harmlessly.
    fds.into_iter()
        .filter(|fd| nix::unistd::close(*fd).is_ok())
        .count()
}
