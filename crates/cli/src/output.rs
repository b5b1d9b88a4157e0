//! Aligned tables for people, and the console-tail bookkeeping of `--wait` / `--follow`.

/// Columns padded to their widest cell (counted in characters), two spaces apart; the last column
/// is not padded so lines carry no trailing blanks.
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.as_ref().chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 < cells.len() {
                l.push_str(cell);
                l.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            } else {
                l.push_str(cell);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        let mut cells: Vec<&str> = row.iter().map(AsRef::as_ref).take(cols).collect();
        cells.resize(cols, "");
        line(cells);
    }
    out
}

/// What is new in a console read, given what was shown before.
///
/// GetConsoleOutput returns the latest part of the console (EC2: the last 64 KiB), so a later
/// read may have dropped its beginning: it is then a suffix of what was shown followed by what is
/// new. The last 256 bytes shown are looked for in the new read; failing that, the longest end of
/// what was shown that begins the new read. When nothing shown is left (more than a window went
/// by between reads), all of it is new.
pub fn console_delta<'a>(shown: &str, latest: &'a str) -> &'a str {
    if let Some(rest) = latest.strip_prefix(shown) {
        return rest;
    }
    const TAIL: usize = 256;
    let mut start = shown.len().saturating_sub(TAIL);
    while !shown.is_char_boundary(start) {
        start += 1;
    }
    let tail = &shown[start..];
    if !tail.is_empty() {
        if let Some(pos) = latest.rfind(tail) {
            return &latest[pos + tail.len()..];
        }
    }
    for (k, _) in tail.char_indices().skip(1) {
        let end = &tail[k..];
        if let Some(rest) = latest.strip_prefix(end) {
            return rest;
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE", "NAME"],
            &[
                vec!["i-1", "running", "web"],
                vec!["i-0123", "stopped", ""],
                vec!["i-2", "pending", "ü"],
            ],
        );
        assert_eq!(
            t,
            "ID      STATE    NAME\ni-1     running  web\ni-0123  stopped\ni-2     pending  ü\n"
        );
        assert_eq!(table::<&str>(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn console_deltas() {
        assert_eq!(console_delta("", "abc"), "abc");
        assert_eq!(console_delta("abc", "abcdef"), "def");
        assert_eq!(console_delta("abc", "abc"), "");
        // The window moved on: the beginning was dropped, the shown end is still there.
        assert_eq!(console_delta("line1\nline2\n", "ne2\nline3\n"), "line3\n");
        // Nothing shown survives: all of it is new.
        assert_eq!(console_delta("old", "brand new"), "brand new");
        let long_old = "é".repeat(300);
        let latest = format!("{}tail", "é".repeat(200));
        assert_eq!(console_delta(&long_old, &latest), "tail");
    }
}
