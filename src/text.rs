//! Words and numbers for people: thousands separators, key ranges and plurals.

/// `1204` → `"1,204"`.
pub fn count(n: u64) -> String {
    Count(n).to_string()
}

/// A number with thousands separators, written without allocating: `Count(1204)` displays
/// as `1,204` (see [`count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u64);

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // u64::MAX has 20 digits: 26 bytes with its 6 separators. Filled from the end.
        let mut buf = [0u8; 26];
        let mut at = buf.len();
        let mut n = self.0;
        let mut digits: u32 = 0;
        loop {
            if digits > 0 && u32::is_multiple_of(digits, 3) {
                at -= 1;
                buf[at] = b',';
            }
            at -= 1;
            buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            digits += 1;
            if n == 0 {
                break;
            }
        }
        // Only ASCII digits and commas were written.
        f.write_str(std::str::from_utf8(&buf[at..]).unwrap_or_default())
    }
}

/// The noun for `n` things: `one` for 1, `many` otherwise (`plural(1, "worker", "workers")`
/// → `"worker"`, `plural(0, …)` → `"workers"`).
pub fn plural<'a, N: PartialEq + From<u8>>(n: N, one: &'a str, many: &'a str) -> &'a str {
    if n == N::from(1) { one } else { many }
}

/// `n` and its noun: `counted(1, "worker", "workers")` → `"1 worker"`, `counted(4, …)` →
/// `"4 workers"` (no thousands separators: as the number would be written alone).
pub fn counted<N: PartialEq + From<u8> + std::fmt::Display>(n: N, one: &str, many: &str) -> String {
    let noun = if n == N::from(1) { one } else { many };
    format!("{n} {noun}")
}

/// `Some((751, 1001))` → `"[751, 1,001)"`; `None` → `"(replica)"`.
pub fn span(range: Option<(u64, u64)>) -> String {
    match range {
        Some((a, b)) => format!("[{}, {})", count(a), count(b)),
        None => "(replica)".into(),
    }
}

/// An argv as a person would type it in a POSIX shell: each word quoted where it needs it
/// (`a b` → `'a b'`), so a path with a space reads as one argument. JSON output keeps arrays;
/// this is for human lines only. A word holding a NUL byte (which no shell can pass) is shown
/// Rust-escaped.
pub fn shell_words<S: AsRef<str>>(argv: &[S]) -> String {
    let mut out = String::new();
    for (i, word) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match shlex::try_quote(word.as_ref()) {
            Ok(q) => out.push_str(&q),
            Err(_) => out.push_str(&format!("{:?}", word.as_ref())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let argv = [
            "python3",
            "/data/my library/worker.py",
            "--name",
            "it's",
            "",
            "--id",
            "3",
        ];
        insta::assert_snapshot!(shell_words(&argv), @r#"python3 '/data/my library/worker.py' --name "it's" '' --id 3"#);
        assert_eq!(shell_words(&["a\0b"]), "\"a\\0b\"");
    }

    #[test]
    fn count_displays_like_count_for_every_digit_length() {
        let mut n: u64 = 0;
        for digits in 1..=20 {
            n = n * 10 + (digits % 10);
            let plain = n.to_string();
            let mut expected = String::new();
            for (i, ch) in plain.chars().enumerate() {
                if i > 0 && (plain.len() - i).is_multiple_of(3) {
                    expected.push(',');
                }
                expected.push(ch);
            }
            assert_eq!(Count(n).to_string(), expected);
        }
        assert_eq!(Count(u64::MAX).to_string(), "18,446,744,073,709,551,615");
        assert_eq!(Count(0).to_string(), "0");
        assert_eq!(format!("at {}", Count(999)), "at 999");
    }

    /// Regression (fresh-clone trial): messages said "1 workers" and "1 worker(s)".
    #[test]
    fn one_thing_is_singular_and_any_other_count_plural() {
        assert_eq!(counted(1u32, "worker", "workers"), "1 worker");
        assert_eq!(counted(0u32, "worker", "workers"), "0 workers");
        assert_eq!(counted(2u64, "process", "processes"), "2 processes");
        assert_eq!(plural(1u32, "time", "times"), "time");
        assert_eq!(counted(1usize, "record", "records"), "1 record");
        assert_eq!(plural(11u64, "time", "times"), "times");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }
}
