//! Plain aligned text tables for the terminal, and the [`Shape`] of each
//! view's table.
//!
//! A table may have a leading column over its `N` (the cluster-wide view's
//! NODE): the same views render with or without it, and the column counts
//! stay checked by the compiler.

pub struct Table<const N: usize> {
    lead: Option<String>,
    header: [String; N],
    /// Each row's leading cell (empty without a leading column) and cells.
    rows: Vec<(String, [String; N])>,
}

impl<const N: usize> Table<N> {
    pub fn new(header: [&str; N]) -> Self {
        Self {
            lead: None,
            header: header.map(str::to_string),
            rows: Vec::new(),
        }
    }

    /// A table whose first column is `lead`, before `header`.
    pub fn with_lead(lead: &str, header: [&str; N]) -> Self {
        Self {
            lead: Some(lead.to_string()),
            ..Self::new(header)
        }
    }

    pub fn row(&mut self, row: [String; N]) {
        self.rows.push((String::new(), row));
    }

    /// A row with its leading cell (ignored without a leading column).
    pub fn lead_row(&mut self, lead: String, row: [String; N]) {
        self.rows.push((lead, row));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let header = (self.lead.clone().unwrap_or_default(), self.header.clone());
        let lines: Vec<Vec<&str>> = std::iter::once(&header)
            .chain(&self.rows)
            .map(|(lead, cells)| {
                let lead = self.lead.as_ref().map(|_| lead.as_str());
                lead.into_iter()
                    .chain(cells.iter().map(String::as_str))
                    .collect()
            })
            .collect();
        let columns = lines[0].len();
        let mut widths = vec![0; columns];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i + 1 == columns {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  "));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// How a view's rows become a table: its header, the cells of its rows
/// (which may merge rows), and what is printed when there are none. One
/// shape renders a node's view (`tagger flows`) and every node's
/// (`--kubernetes`, NODE first).
pub struct Shape<T, const N: usize> {
    pub header: [&'static str; N],
    pub cells: fn(&[T]) -> Vec<[String; N]>,
    pub empty: &'static str,
}

impl<T, const N: usize> Shape<T, N> {
    pub fn render(&self, rows: &[T]) -> String {
        let mut table = Table::new(self.header);
        for cells in (self.cells)(rows) {
            table.row(cells);
        }
        self.finish(&table)
    }

    /// Each group's rows under its name, in a first column `lead`.
    pub fn render_led<'a>(
        &self,
        lead: &str,
        groups: impl IntoIterator<Item = (&'a str, &'a [T])>,
    ) -> String
    where
        T: 'a,
    {
        let mut table = Table::with_lead(lead, self.header);
        for (name, rows) in groups {
            for cells in (self.cells)(rows) {
                table.lead_row(name.to_string(), cells);
            }
        }
        self.finish(&table)
    }

    fn finish(&self, table: &Table<N>) -> String {
        if table.is_empty() {
            self.empty.to_string()
        } else {
            table.render()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(["wide-cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          LONGER\nwide-cell  x\n");
    }

    #[test]
    fn a_leading_column_comes_first_and_is_aligned_too() {
        let mut t = Table::with_lead("NODE", ["A", "LONGER"]);
        t.lead_row("node-a".into(), ["wide-cell".into(), "x".into()]);
        t.lead_row("b".into(), ["y".into(), "z".into()]);
        assert_eq!(
            t.render(),
            "NODE    A          LONGER\nnode-a  wide-cell  x\nb       y          z\n"
        );
    }
}
