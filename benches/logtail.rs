//! A log-tail read (`read_tail`) of a 20 KB log and of a 20 GB sparse log with the same lines
//! at its end: the first look (no cursor: the tail window is read) and a steady read (three new
//! lines since the cursor). The cost must not depend on the file's size.
//!
//! Run with `cargo bench --bench logtail`; `BENCH_ITERS` sets the number of timed runs.

#![allow(missing_docs)]

mod common;

use std::io::Write;
use std::path::Path;

use automon::observe::logtail::{LineFormat, LogObservation, read_tail};

fn lines(from: u64, count: u64) -> String {
    (from..from + count)
        .map(|i| {
            format!(
                "2026-11-29 06:52:{:02},{:03} - INFO - Successfully uploaded: book {i} (Title {i})\n",
                i % 60,
                i % 1000
            )
        })
        .collect()
}

fn bench(label: &str, path: &Path, size: u64, iters: usize) {
    let Ok(f) = std::fs::File::create(path) else {
        panic!("cannot create {}", path.display());
    };
    let body = lines(0, 20_000 / 90);
    // The file's size, with the lines at its end (a sparse hole before them).
    if size > body.len() as u64 && f.set_len(size - body.len() as u64).is_err() {
        panic!("cannot extend {}", path.display());
    }
    drop(f);
    let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) else {
        panic!("cannot open {}", path.display());
    };
    if f.write_all(body.as_bytes()).is_err() {
        panic!("cannot write {}", path.display());
    }
    drop(f);
    let desired = common::desired(1, path.parent().unwrap_or(Path::new(".")));
    let format = LineFormat::python(jiff::tz::TimeZone::UTC);
    let first = common::Timings::measure(3, iters, || {
        let obs = read_tail(path, desired.tail_bytes, None, &desired.patterns, &format);
        std::hint::black_box(obs);
    });
    common::report(
        &format!(
            "read_tail {label}, first look ({} KiB window)",
            desired.tail_bytes >> 10
        ),
        &first,
        None,
    );
    let LogObservation::Read { cursor, .. } =
        read_tail(path, desired.tail_bytes, None, &desired.patterns, &format)
    else {
        panic!("log not read");
    };
    let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) else {
        panic!("cannot open {}", path.display());
    };
    if f.write_all(lines(1_000_000, 3).as_bytes()).is_err() {
        panic!("cannot append");
    }
    let steady = common::Timings::measure(3, iters, || {
        let obs = read_tail(
            path,
            desired.tail_bytes,
            Some(&cursor),
            &desired.patterns,
            &format,
        );
        std::hint::black_box(obs);
    });
    common::report(
        &format!("read_tail {label}, 3 new lines since the cursor"),
        &steady,
        None,
    );
}

fn main() {
    let iters = common::iters(200);
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => panic!("tempdir: {e}"),
    };
    bench("20 KB", &tmp.path().join("small.log"), 20_000, iters);
    bench(
        "20 GB sparse",
        &tmp.path().join("big.log"),
        20_000_000_000,
        iters,
    );
}
