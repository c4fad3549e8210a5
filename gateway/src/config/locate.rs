//! Maps a key path such as `routes[2].upstream` back to a line and column of the TOML source,
//! so that every validation error can point at the place to fix.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the config document, built while validating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Line and column (1-based) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto
        .rfind('\n')
        .map_or(upto.len(), |nl| upto.len() - nl - 1)
        + 1;
    (line, col)
}

/// Finds the deepest existing element of `path` in `text` and returns the start of its span.
/// With `at_key`, the last step points at the key itself (for unknown keys) rather than its value.
pub fn locate(text: &str, path: &KeyPath, at_key: bool) -> Option<usize> {
    let doc = toml_edit::Document::parse(text.to_string()).ok()?;
    locate_in_item(doc.as_item(), &path.0, None, at_key)
}

fn locate_in_table(
    t: &toml_edit::Table,
    rest: &[Seg],
    best: Option<usize>,
    at_key: bool,
) -> Option<usize> {
    let Some((first, tail)) = rest.split_first() else {
        return best;
    };
    let Seg::Key(k) = first else { return best };
    let Some(item) = t.get(k) else { return best };
    // The last step points at the key itself (`tagets = ...` is reported at `tagets`).
    let key_span = if tail.is_empty() && at_key {
        t.key(k).and_then(|key| key.span())
    } else {
        None
    };
    let best = key_span.or_else(|| item.span()).map(|s| s.start).or(best);
    locate_in_item(item, tail, best, at_key)
}

fn locate_in_item(
    item: &toml_edit::Item,
    rest: &[Seg],
    best: Option<usize>,
    at_key: bool,
) -> Option<usize> {
    match item {
        toml_edit::Item::Table(t) => locate_in_table(t, rest, best, at_key),
        toml_edit::Item::Value(v) => locate_in_value(v, rest, best, at_key),
        toml_edit::Item::ArrayOfTables(a) => match rest.split_first() {
            Some((Seg::Index(i), tail)) => match a.get(*i) {
                Some(t) => locate_in_table(t, tail, t.span().map(|s| s.start).or(best), at_key),
                None => best,
            },
            _ => best,
        },
        toml_edit::Item::None => best,
    }
}

fn locate_in_value(
    v: &toml_edit::Value,
    rest: &[Seg],
    best: Option<usize>,
    at_key: bool,
) -> Option<usize> {
    let Some((first, tail)) = rest.split_first() else {
        return best;
    };
    match (first, v) {
        (Seg::Key(k), toml_edit::Value::InlineTable(t)) => match t.get(k) {
            Some(inner) => {
                let key_span = if tail.is_empty() && at_key {
                    t.key(k).and_then(|key| key.span())
                } else {
                    None
                };
                let at = key_span.or_else(|| inner.span()).map(|s| s.start).or(best);
                locate_in_value(inner, tail, at, at_key)
            }
            None => best,
        },
        (Seg::Index(i), toml_edit::Value::Array(a)) => match a.get(*i) {
            Some(inner) => {
                locate_in_value(inner, tail, inner.span().map(|s| s.start).or(best), at_key)
            }
            None => best,
        },
        _ => best,
    }
}

/// The key path of the smallest element of `text` whose span contains `offset`: where a
/// deserialization error (wrong type, missing field) points, as a name the user can search for.
pub fn path_at(text: &str, offset: usize) -> Option<KeyPath> {
    let doc = toml_edit::Document::parse(text.to_string()).ok()?;
    let mut best = None;
    visit_item(doc.as_item(), &KeyPath::default(), offset, &mut best);
    best.map(|(_, p)| p)
}

/// `(span length, path)` of the best match so far; a later (deeper) element of the same
/// length wins.
type Best = Option<(usize, KeyPath)>;

fn consider(span: Option<std::ops::Range<usize>>, path: &KeyPath, offset: usize, best: &mut Best) {
    if let Some(s) = span
        && !path.0.is_empty()
        && s.start <= offset
        && offset < s.end.max(s.start + 1)
        && best.as_ref().is_none_or(|(len, _)| s.len() <= *len)
    {
        *best = Some((s.len(), path.clone()));
    }
}

fn visit_table(t: &toml_edit::Table, path: &KeyPath, offset: usize, best: &mut Best) {
    consider(t.span(), path, offset, best);
    for (k, item) in t.iter() {
        let p = path.key(k);
        consider(t.key(k).and_then(|key| key.span()), &p, offset, best);
        visit_item(item, &p, offset, best);
    }
}

fn visit_item(item: &toml_edit::Item, path: &KeyPath, offset: usize, best: &mut Best) {
    match item {
        toml_edit::Item::Table(t) => visit_table(t, path, offset, best),
        toml_edit::Item::Value(v) => visit_value(v, path, offset, best),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                visit_table(t, &path.index(i), offset, best);
            }
        }
        toml_edit::Item::None => {}
    }
}

fn visit_value(v: &toml_edit::Value, path: &KeyPath, offset: usize, best: &mut Best) {
    consider(v.span(), path, offset, best);
    match v {
        toml_edit::Value::InlineTable(t) => {
            for (k, inner) in t.iter() {
                let p = path.key(k);
                consider(t.key(k).and_then(|key| key.span()), &p, offset, best);
                visit_value(inner, &p, offset, best);
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, inner) in a.iter().enumerate() {
                visit_value(inner, &path.index(i), offset, best);
            }
        }
        _ => {}
    }
}
