//! "Did you mean …?" for misspelt field and variant names, by edit distance.

/// Levenshtein distance between `a` and `b`, counted in characters (insert, delete, substitute).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely misspelling: at most a
/// third of the longer name's characters differ (at least one edit is always allowed), or the
/// names differ only in case, `-`/`_`, or camelCase. Ties go to the earlier candidate.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let folded = fold(word);
    if let Some(same) = candidates.iter().find(|c| fold(c) == folded) {
        return Some(same);
    }
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= (word.chars().count().max(c.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Lower case without `-` and `_`, so `api-key-env`, `apiKeyEnv` and `api_key_env` compare equal.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_single_edits() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("templte", "template"), 1);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("ü", "u"), 1);
    }

    #[test]
    fn suggests_near_names_only() {
        let fields = ["template", "progress", "logs", "health", "interval"];
        assert_eq!(closest("templte", &fields), Some("template"));
        assert_eq!(closest("helth", &fields), Some("health"));
        assert_eq!(closest("log", &fields), Some("logs"));
        assert_eq!(closest("frobnicate", &fields), None);
    }

    #[test]
    fn case_and_separators_are_near() {
        let fields = ["api_key_env", "base_url"];
        assert_eq!(closest("apiKeyEnv", &fields), Some("api_key_env"));
        assert_eq!(closest("base-url", &fields), Some("base_url"));
    }
}
