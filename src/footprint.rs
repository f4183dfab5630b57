//! The daemon's memory footprint: once started, it gives back the pages of its own binary that
//! only startup used.
//!
//! Starting up runs code that the control loop never runs again (argument parsing, YAML
//! parsing and validation, the `/proc` scan, regex compilation, the metrics set-up), and Linux
//! maps file-backed code in 64 KB "fault-around" windows, so after the first pass about 6 MB of
//! an 8 MB binary is resident although a steady pass touches about 1 MB of it.
//! [`release_startup_code`] asks the kernel to reclaim this process's mappings of its own
//! executable (`MADV_PAGEOUT`, Linux 5.4+); pages the loop still uses come back as it runs them
//! (a page-cache miss reads them from the binary once). Contents never change: the pages are
//! clean copies of the executable file.
//!
//! Large heap blocks go back to the kernel when freed ([`return_large_blocks`]): glibc's
//! malloc otherwise raises its `mmap` threshold each time such a block is freed, after which
//! blocks of that size come from the heap and stay resident.

use std::os::unix::fs::MetadataExt;

/// Reclaims the read-only (code and constant data) mappings of the running executable.
/// Returns the number of bytes advised; pages mapped by other processes too (another
/// `automon` running) are left alone by the kernel. Best effort: on an older kernel, an
/// unreadable `/proc/self/maps` or a binary whose identity cannot be read, nothing happens and
/// 0 is returned.
pub fn release_startup_code() -> usize {
    let Ok(exe) = std::fs::metadata("/proc/self/exe") else {
        return 0;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let file = MappedFile {
        major: nix::sys::stat::major(exe.dev()),
        minor: nix::sys::stat::minor(exe.dev()),
        inode: exe.ino(),
    };
    maps.lines()
        .filter_map(|line| read_only_range_of(line, file))
        .filter(|&(start, end)| page_out(start, end - start))
        .map(|(start, end)| end - start)
        .sum()
}

/// The size from which a heap block is its own mapping, returned to the kernel when freed.
pub const LARGE_BLOCK: usize = 128 * 1024;

/// Fixes glibc's `mmap` threshold at [`LARGE_BLOCK`] (its initial value), which also stops
/// glibc from raising it as large blocks are freed. Without this, the first freed serialisation
/// of `state.json` (about 1 KB per worker, written on the writer thread every pass that changed
/// something) raised the threshold above that size, and from then on every such buffer came from
/// the heap and stayed resident: `bench/scale.sh` measured 4 MB more RSS at 1,000 and 2,000
/// changing workers. A block this large costs a `mmap`/`munmap` pair instead, once a pass at
/// most. Returns false when the C library is not glibc or refused the setting.
#[allow(unsafe_code)]
pub fn return_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes a malloc tunable; it is called once, before the loop's
        // threads allocate (any thread may call it at any time: glibc takes its arena lock).
        let threshold = nix::libc::c_int::try_from(LARGE_BLOCK).unwrap_or(nix::libc::c_int::MAX);
        unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, threshold) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A file as `/proc/PID/maps` names it: device major and minor (hex there) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MappedFile {
    major: u64,
    minor: u64,
    inode: u64,
}

/// `start..end` of a `/proc/self/maps` line (`START-END PERMS OFFSET MAJ:MIN INODE PATH`) that
/// maps `file` readable and not writable; `None` for any other line.
fn read_only_range_of(line: &str, file: MappedFile) -> Option<(usize, usize)> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode: u64 = fields.next()?.parse().ok()?;
    if perms.first() != Some(&b'r') || perms.get(1) != Some(&b'-') {
        return None;
    }
    let mapped = MappedFile {
        major: u64::from_str_radix(major, 16).ok()?,
        minor: u64::from_str_radix(minor, 16).ok()?,
        inode,
    };
    if mapped != file {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some((start, end))
}

#[allow(unsafe_code)]
fn page_out(start: usize, len: usize) -> bool {
    let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
        return false;
    };
    // SAFETY: the range is one whole, page-aligned, read-only mapping of the executable file
    // listed in /proc/self/maps. MADV_PAGEOUT never discards contents: a clean file page is
    // unmapped (and dropped from the page cache when nobody else maps it) and a later read
    // faults the identical bytes back from the file; a page that differs from the file — the
    // relocated RELRO data (vtables, function pointers) the loader wrote before making it
    // read-only — is anonymous copy-on-write memory, written to swap or kept, never dropped.
    // So no Rust reference observes a change. (MADV_DONTNEED would drop those relocated pages
    // and crash the process: see the test below.) A range unmapped in the meantime makes the
    // call fail with ENOMEM, which is ignored.
    unsafe { nix::sys::mman::madvise(addr, len, nix::sys::mman::MmapAdvise::MADV_PAGEOUT) }.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: MappedFile = MappedFile {
        major: 0xfe,
        minor: 0,
        inode: 5_713_094,
    };

    /// Run alone in a child process by the test below (a fresh thread, a fresh malloc arena):
    /// with `FIXED` set it fixes the threshold first. A 512 KB block (above the threshold) is
    /// mapped on its own and freed; then a block of the same size again: with a fixed threshold
    /// it is mapped again (page boundary + malloc's 16-byte header), otherwise glibc raised the
    /// threshold at the free and the block comes from the arena's heap.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[ignore = "run by a_freed_large_block_does_not_make_the_next_one_stay_on_the_heap"]
    fn large_block_probe() {
        if std::env::var_os("FOOTPRINT_PROBE_FIXED").is_some() {
            assert!(return_large_blocks(), "mallopt(M_MMAP_THRESHOLD) accepted");
        }
        let size = 4 * LARGE_BLOCK;
        drop(std::hint::black_box(vec![1u8; size]));
        let block = std::hint::black_box(vec![2u8; size]);
        println!("OFFSET={}", block.as_ptr() as usize % 4096);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_freed_large_block_does_not_make_the_next_one_stay_on_the_heap() {
        let probe = |fixed: bool| {
            let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
            cmd.args([
                "footprint::tests::large_block_probe",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]);
            if fixed {
                cmd.env("FOOTPRINT_PROBE_FIXED", "1");
            }
            let out = cmd.output().expect("run the probe");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "probe failed: {text}");
            text.lines()
                .find_map(|l| l.split_once("OFFSET=").map(|(_, v)| v))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no OFFSET line in: {text}"))
        };
        assert_eq!(
            probe(true),
            16,
            "with the threshold fixed, the block has a mapping of its own"
        );
        // The control: glibc's default behaviour, which the fix exists to stop, is still what
        // this probe detects (else the assertion above would prove nothing).
        assert_ne!(
            probe(false),
            16,
            "without the fix, the freed block raised the threshold and the next one is on the heap"
        );
    }

    #[test]
    fn only_read_only_mappings_of_the_executable_are_chosen() {
        let text = "55e316a82000-55e3172e8000 r-xp 00304000 fe:00 5713094    /usr/bin/automon";
        assert_eq!(
            read_only_range_of(text, EXE),
            Some((0x55e3_16a8_2000, 0x55e3_172e_8000))
        );
        let rodata = "7f00-8f00 r--p 00000000 fe:00 5713094 /usr/bin/automon (deleted)";
        assert_eq!(read_only_range_of(rodata, EXE), Some((0x7f00, 0x8f00)));
        for other in [
            // Writable data of the executable: would lose its contents' relocations.
            "7f00-8f00 rw-p 00bd8000 fe:00 5713094 /usr/bin/automon",
            // Another file (libc), another device, anonymous memory, the heap, the vDSO.
            "7f00-8f00 r-xp 00000000 fe:00 12 /usr/lib/libc.so.6",
            "7f00-8f00 r-xp 00304000 fe:01 5713094 /mnt/automon",
            "7f00-8f00 r--p 00000000 00:00 0",
            "7f00-8f00 rw-p 00000000 00:00 0 [heap]",
            "7f00-8f00 r-xp 00000000 00:00 0 [vdso]",
            "8f00-7f00 r-xp 00304000 fe:00 5713094 /usr/bin/automon",
            "garbage",
            "",
        ] {
            assert_eq!(read_only_range_of(other, EXE), None, "{other}");
        }
    }

    /// Resident kB of this process's mappings of its own executable, from /proc/self/smaps.
    fn resident_exe_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").expect("exe link");
        let exe = exe.to_string_lossy().into_owned();
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut ours = false;
        let mut kb = 0;
        for line in smaps.lines() {
            let first = line.split_ascii_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                // A mapping's header line: `START-END PERMS OFFSET DEV INODE PATH`.
                ours = line.ends_with(exe.as_str());
            } else if ours && let Some(v) = line.strip_prefix("Rss:") {
                kb += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
        kb
    }

    #[test]
    fn releasing_startup_code_lowers_this_process_resident_set_and_code_still_runs() {
        let before = resident_exe_kb();
        let advised = release_startup_code();
        let after = resident_exe_kb();
        assert!(advised > 0, "no mapping of the test executable was advised");
        assert!(
            after < before,
            "resident kB of the executable did not drop: {before} -> {after}"
        );
        // Code paged out runs again (faulted back from the file).
        assert_eq!(
            read_only_range_of("1000-2000 r-xp 0 fe:00 5713094 /x", EXE),
            Some((0x1000, 0x2000))
        );
    }

    /// Regression: advising with MADV_DONTNEED instead of MADV_PAGEOUT dropped the relocated
    /// RELRO pages (read-only after the loader wrote them) and the daemon segfaulted on its
    /// next virtual call. After a release, calls through vtables and function pointers (which
    /// live in RELRO) still work.
    #[test]
    fn relocated_read_only_data_survives_a_release() {
        release_startup_code();
        let shown: Vec<Box<dyn std::fmt::Display>> = vec![Box::new(42_u64), Box::new("text")];
        let text: Vec<String> = shown.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["42", "text"]);
        let ops: [fn(u64) -> u32; 2] = [u64::count_ones, u64::leading_zeros];
        assert_eq!(ops.map(|f| f(std::hint::black_box(3))), [2, 62]);
    }
}
