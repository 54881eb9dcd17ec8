//! Mappings that would overwrite the wrong data: one destination column fed by two source columns
//! (the last write would win), and a compared column that is a destination key column (`apply`
//! would rewrite keys). Each problem names both lines.

use std::collections::HashMap;

use super::ColumnPair;

/// Problems as (offset of the offending line, message); `line_of` turns offsets into lines.
pub(super) fn clashes(
    keys: &[(ColumnPair, usize)],
    compare: &[(ColumnPair, usize)],
    line_of: &dyn Fn(usize) -> usize,
) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    for (section, pairs) in [("match", keys), ("compare", compare)] {
        let mut seen: HashMap<&str, (&str, usize)> = HashMap::new();
        for (pair, at) in pairs {
            match seen.get(pair.destination.as_str()) {
                Some((first, first_at)) => problems.push((
                    *at,
                    format!(
                        "`{section}.{}` and `{section}.{first}` (line {}) both map to destination column `{}`: one destination column takes one source column",
                        pair.source,
                        line_of(*first_at),
                        pair.destination
                    ),
                )),
                None => {
                    seen.insert(&pair.destination, (&pair.source, *at));
                }
            }
        }
    }
    let key_lines: HashMap<&str, (&str, usize)> = keys
        .iter()
        .map(|(p, at)| (p.destination.as_str(), (p.source.as_str(), *at)))
        .collect();
    for (pair, at) in compare {
        if let Some((key, key_at)) = key_lines.get(pair.destination.as_str()) {
            problems.push((
                *at,
                format!(
                    "`compare.{}` maps onto destination key column `{}` (`match.{key}`, line {}): apply would rewrite keys; a key column is matched, never compared",
                    pair.source,
                    pair.destination,
                    line_of(*key_at)
                ),
            ));
        }
    }
    problems
}
