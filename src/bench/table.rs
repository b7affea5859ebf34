//! Plain-text tables (columns padded to their widest cell, a dashed rule under the header) and
//! the number formats benchmark tables share.

use super::stats::Summary;
use std::fmt;

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table of text cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| h.to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are an error of the caller.
    pub fn row(&mut self, cells: Vec<String>) {
        assert!(
            cells.len() <= self.headers.len(),
            "a table row has more cells than the table has columns"
        );
        self.rows.push(cells);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.headers[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    s.push_str("  ");
                }
                match self.align[i] {
                    Align::Left => s.push_str(&format!("{cell:<w$}")),
                    Align::Right => s.push_str(&format!("{cell:>w$}")),
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// `min / median / max` with `decimals` digits, or `-` when not measured.
pub fn min_med_max(s: Option<&Summary>, decimals: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} / {:.d$} / {:.d$}",
            s.min,
            s.median,
            s.max,
            d = decimals
        ),
        None => "-".into(),
    }
}

/// The median with `decimals` digits, or `-`.
pub fn med(s: Option<&Summary>, decimals: usize) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{:.d$}", s.median, d = decimals))
}

/// A ratio as `0.97x`, or `-` when not measured.
pub fn ratio_cell(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_columns() {
        let mut t = Table::new(&[("name", Align::Left), ("value", Align::Right)]);
        t.row(vec!["a".into(), "1.00".into()]);
        t.row(vec!["longer".into(), "12.50".into()]);
        t.row(vec!["short".into()]);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.render(),
            "name    value\n\
             -------------\n\
             a        1.00\n\
             longer  12.50\n\
             short\n"
        );
    }

    #[test]
    fn empty_table_has_header() {
        let t = Table::new(&[("x", Align::Left)]);
        assert!(t.is_empty());
        assert_eq!(t.to_string(), "x\n-\n");
    }

    #[test]
    #[should_panic(expected = "more cells")]
    fn too_many_cells() {
        Table::new(&[("x", Align::Left)]).row(vec!["a".into(), "b".into()]);
    }

    #[test]
    fn number_formats() {
        let s = Summary::of(&[1.0, 2.0, 3.456]).unwrap();
        assert_eq!(min_med_max(Some(&s), 2), "1.00 / 2.00 / 3.46");
        assert_eq!(min_med_max(None, 2), "-");
        assert_eq!(med(Some(&s), 1), "2.0");
        assert_eq!(med(None, 1), "-");
        assert_eq!(ratio_cell(Some(0.9749)), "0.97x");
        assert_eq!(ratio_cell(None), "-");
    }
}
