//! Markdown tables of medians: each cell collects one value per run.

use std::fmt;

pub struct Table {
    title: &'static str,
    columns: Vec<String>,
    rows: Vec<(String, Vec<Vec<f64>>)>,
}

impl Table {
    pub fn new(title: &'static str) -> Self {
        Table {
            title,
            columns: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn record(&mut self, row: &str, column: &str, value: f64) {
        let c = match self.columns.iter().position(|c| c == column) {
            Some(c) => c,
            None => {
                self.columns.push(column.to_string());
                self.columns.len() - 1
            }
        };
        let r = match self.rows.iter().position(|(name, _)| name == row) {
            Some(r) => r,
            None => {
                self.rows.push((row.to_string(), Vec::new()));
                self.rows.len() - 1
            }
        };
        let cells = &mut self.rows[r].1;
        if cells.len() <= c {
            cells.resize(c + 1, Vec::new());
        }
        cells[c].push(value);
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "### {}\n", self.title)?;
        write!(f, "| |")?;
        for column in &self.columns {
            write!(f, " {column} |")?;
        }
        write!(f, "\n|---|")?;
        for _ in &self.columns {
            write!(f, "---:|")?;
        }
        writeln!(f)?;
        for (name, cells) in &self.rows {
            write!(f, "| {name} |")?;
            for c in 0..self.columns.len() {
                match cells.get(c).and_then(|values| median(values)) {
                    Some(v) if v.abs() >= 100.0 => write!(f, " {v:.0} |")?,
                    Some(v) => write!(f, " {v:.2} |")?,
                    None => write!(f, " - |")?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
