//! The markdown report: tables, and the facts about the machine and run
//! that make numbers comparable (cores, kernel, date, load, versions, the
//! exact command).
use std::{fmt::Write as _, fs, process::Command};

use crate::util::capture;

/// A markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.header);
        out.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

fn cmd_line(program: &str, args: &[&str]) -> String {
    capture(Command::new(program).args(args))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The "Machine and run" block at the top of the report.
pub fn machine(command: &str, tools: &[(&str, String)], load_before: &str) -> String {
    let mut out = String::new();
    let rows = [
        ("command", format!("`{command}`")),
        ("date", cmd_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])),
        (
            "cores (nproc)",
            format!("{} ({})", cmd_line("nproc", &[]), cpu_model()),
        ),
        ("kernel (uname -r)", cmd_line("uname", &["-r"])),
        (
            "load average before / after",
            format!("{load_before} / {}", loadavg()),
        ),
    ];
    for (k, v) in rows
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .chain(tools.iter().map(|(k, v)| (*k, v.clone())))
    {
        let _ = writeln!(out, "- **{k}**: {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn renders_markdown() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["1".into(), "x|y".into()]);
        assert_eq!(t.render(), "| a | b |\n|---|---|\n| 1 | x\\|y |\n");
    }
}
