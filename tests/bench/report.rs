//! Results: one JSON file per scenario under the results directory, and a
//! summary table (printed, and written as `summary.md`).

use std::path::Path;

use serde_json::{Value, json};

/// One line of the summary table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub figure: String,
    pub value: String,
    pub ratio: String,
    pub target: String,
    /// `None`: no target, or not measured.
    pub met: Option<bool>,
    pub note: String,
}

impl Row {
    pub fn new(
        scenario: &'static str,
        figure: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            scenario,
            figure: figure.into(),
            value: value.into(),
            ratio: String::new(),
            target: String::new(),
            met: None,
            note: String::new(),
        }
    }

    pub fn ratio(mut self, ratio: impl Into<String>) -> Self {
        self.ratio = ratio.into();
        self
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn met_text(&self) -> &'static str {
        match (self.met, self.target.is_empty()) {
            (Some(true), _) => "yes",
            (Some(false), _) => "NO",
            (None, false) => "not measured",
            (None, true) => "",
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "figure": self.figure,
            "value": self.value,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        })
    }
}

/// What a scenario hands back: its parameters, its raw figures and its rows.
pub struct ScenarioResult {
    pub name: &'static str,
    pub params: Value,
    pub data: Value,
    pub rows: Vec<Row>,
}

/// The context every result file carries.
pub struct RunInfo {
    pub command: String,
    pub machine: Value,
    pub databases: Value,
    pub git: String,
    pub started_at: String,
}

pub fn write_scenario(dir: &Path, run: &RunInfo, result: &ScenarioResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let doc = json!({
        "scenario": result.name,
        "command": run.command,
        "git": run.git,
        "started_at": run.started_at,
        "machine": run.machine,
        "loadavg_at_end": crate::setup::loadavg(),
        "databases": run.databases,
        "params": result.params,
        "results": result.data,
        "rows": result.rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    let path = dir.join(format!("{}.json", result.name));
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    Ok(())
}

/// The summary table as Markdown.
pub fn markdown(run: &RunInfo, rows: &[Row]) -> String {
    let m = &run.machine;
    let mut out = String::new();
    out.push_str("# Benchmark summary\n\n");
    out.push_str(&format!(
        "- command: `{}`\n- commit: {}\n- started: {}\n- machine: {} × {} (nproc {}), {} GiB RAM, Linux {}, load average at start {}, at the end {}\n- databases: Postgres {}, SQLite {}, MariaDB {}\n\n",
        run.command,
        run.git,
        run.started_at,
        m["cpu"].as_str().unwrap_or("?"),
        m["nproc"],
        m["nproc"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg_at_start"].as_str().unwrap_or("?"),
        crate::setup::loadavg(),
        run.databases["postgres"].as_str().unwrap_or("?"),
        run.databases["sqlite"].as_str().unwrap_or("?"),
        run.databases["mariadb"].as_str().unwrap_or("?"),
    ));
    out.push_str("| scenario | figure | value | ratio | target | met | note |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.figure,
            r.value,
            r.ratio,
            r.target,
            r.met_text(),
            r.note.replace('|', "\\|")
        ));
    }
    out
}

/// The summary as plain text for the terminal.
pub fn print_summary(rows: &[Row]) {
    let width = |f: fn(&Row) -> &str, head: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(head.len())
    };
    let w = [
        width(|r| r.scenario, "scenario"),
        width(|r| &r.figure, "figure"),
        width(|r| &r.value, "value"),
        width(|r| &r.ratio, "ratio"),
        width(|r| &r.target, "target"),
    ];
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < 5 {
                let pad = w[i].saturating_sub(cell.chars().count());
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            } else {
                s.push_str(cell);
            }
        }
        s
    };
    println!();
    println!(
        "{}",
        line(["scenario", "figure", "value", "ratio", "target", "met"])
    );
    for r in rows {
        println!(
            "{}",
            line([
                r.scenario,
                &r.figure,
                &r.value,
                &r.ratio,
                &r.target,
                r.met_text()
            ])
        );
        if !r.note.is_empty() {
            println!("    {}", r.note);
        }
    }
}
