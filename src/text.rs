//! Words and numbers for people: thousands separators and key ranges.

/// `1204` → `"1,204"`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `Some((751, 1001))` → `"[751, 1,001)"`; `None` → `"(replica)"`.
pub fn span(range: Option<(u64, u64)>) -> String {
    match range {
        Some((a, b)) => format!("[{}, {})", count(a), count(b)),
        None => "(replica)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }
}
