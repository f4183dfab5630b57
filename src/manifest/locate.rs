//! Finds the line and column of a dotted field path (`spec.workers.min`) in manifest text.
//!
//! serde reports locations only for syntax and type errors; semantic problems are found after
//! parsing, so their location is recovered here by walking the path's keys through the text in
//! order, each key searched only inside its parent's block (the lines indented deeper than the
//! parent key). Works for block and flow style; a sequence index segment (`command.2`) points at
//! the sequence's key. When a key is absent (a default was used, or an override set it), the
//! nearest ancestor that is present is returned; `None` only when not even the first key is.

/// Returns the 1-based (line, column) of the deepest key of `path` found in `text`.
pub fn locate(text: &str, path: &str) -> Option<(u64, u64)> {
    let (mut from, mut to) = (0usize, text.len());
    let mut found = None;
    for segment in path.split('.') {
        if segment.is_empty() || segment.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Some(at) = find_key(text, segment, from, to) else {
            break;
        };
        found = Some(at);
        from = at + segment.len();
        to = block_end(text, at).min(to);
    }
    found.map(|offset| line_col(text, offset))
}

/// End of the block of the key at `at`: the start of the first later line that has content and
/// is indented no deeper than the key's column (or the end of the text).
fn block_end(text: &str, at: usize) -> usize {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..at].chars().count();
    let mut pos = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
    while pos < text.len() {
        let line = text[pos..].split('\n').next().unwrap_or("");
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if !body.is_empty() && !body.starts_with('#') && indent <= column {
            return pos;
        }
        pos += line.len() + 1;
    }
    text.len()
}

/// Offset of the first `key:` in `from..to` that is a mapping key (preceded by indentation,
/// `{`, `,` or `- `, and followed by `:`), skipping comments.
fn find_key(text: &str, key: &str, from: usize, to: usize) -> Option<usize> {
    let mut search = from;
    while let Some(rel) = text.get(search..to)?.find(key) {
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
    fn absent_key_points_at_its_nearest_present_ancestor() {
        assert_eq!(locate(TEXT, "spec.workers.max"), Some((4, 3)));
        assert_eq!(locate(TEXT, "metadata.name"), None);
    }

    #[test]
    fn a_key_is_searched_only_inside_its_parents_block() {
        let text =
            "spec:\n  workers: {target: 4}\n  template:\n    parameters:\n      p: {min: 1}\n";
        // workers.min is absent: the `min` under template must not be taken for it.
        assert_eq!(locate(text, "spec.workers.min"), Some((2, 3)));
        assert_eq!(locate(text, "spec.template.parameters.p"), Some((5, 7)));
    }
}
