//! Finds the line and column of a dotted field path (`spec.workers.min`) in manifest text.
//!
//! serde reports locations only for syntax and type errors; semantic problems are found after
//! parsing, so their location is recovered here by walking the path's keys through the text in
//! order. Works for block and flow style; a sequence index segment (`command.2`) points at the
//! sequence's key. Returns `None` when a key is absent (a default was used).

/// Returns the 1-based (line, column) of the last key of `path` found in `text`.
pub fn locate(text: &str, path: &str) -> Option<(u64, u64)> {
    let mut from = 0usize;
    let mut found = None;
    for segment in path.split('.') {
        if segment.is_empty() || segment.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let at = find_key(text, segment, from)?;
        found = Some(at);
        from = at + segment.len();
    }
    found.map(|offset| line_col(text, offset))
}

/// Offset of the first `key:` at or after `from` that is a mapping key (preceded by indentation,
/// `{`, `,` or `- `, and followed by `:`), skipping comments.
fn find_key(text: &str, key: &str, from: usize) -> Option<usize> {
    let mut search = from;
    while let Some(rel) = text.get(search..)?.find(key) {
        let at = search + rel;
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].chars().next();
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let in_comment = text[line_start..at].contains('#');
        let key_start = matches!(
            before,
            None | Some(' ' | '\n' | '{' | ',' | '\t' | '"' | '\'')
        );
        let key_end = matches!(after, Some(':' | '"' | '\''));
        if key_start && key_end && !in_comment {
            return Some(at);
        }
        search = at + key.len();
    }
    None
}

fn line_col(text: &str, offset: usize) -> (u64, u64) {
    let before = &text[..offset];
    let line = before.matches('\n').count() as u64 + 1;
    let col = before.rfind('\n').map_or(offset, |i| offset - i - 1) as u64 + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::locate;

    const TEXT: &str = "apiVersion: automon/v1\nspec:\n  # min: comment\n  workers:\n    target: 4\n    min: 9\n  health: {stuck_after: 5m, discovery_grace: 1m}\n";

    #[test]
    fn finds_nested_block_keys_after_their_parents() {
        assert_eq!(locate(TEXT, "spec.workers.min"), Some((6, 5)));
    }

    #[test]
    fn finds_flow_style_keys() {
        assert_eq!(locate(TEXT, "spec.health.discovery_grace"), Some((7, 29)));
    }

    #[test]
    fn absent_key_has_no_location() {
        assert_eq!(locate(TEXT, "spec.workers.max"), None);
    }
}
