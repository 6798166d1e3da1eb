//! Plain text tables for the operator commands: each column as wide as its widest cell, two spaces between
//! columns, no trailing blanks.

/// `rows[0]` is the header. `right(row, column)` says which cells are aligned right (numbers, say).
pub fn aligned(rows: &[Vec<String>], right: impl Fn(usize, usize) -> bool) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (v, w))| if right(i, c) { format!("{v:>w$}") } else { format!("{v:<w$}") })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
