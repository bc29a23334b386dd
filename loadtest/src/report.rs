//! `herald-loadtest report`: renders BENCHMARKS.md from the JSON results the scenario scripts
//! wrote (`<results>/{intake,fanout,webhooks,e2e,commandstats,scale,workflow}/*.json`, plus each folder's `manifest.json`:
//! the command that produced it and the facts only the script knows, such as the Redis version).
//!
//! Every table, ratio and "met / NOT met" verdict is computed here from the numbers; the prose
//! (how a scenario measures, what bounds Herald, next steps) is human-written and kept in
//! `loadtest/notes/<section>-method.md` (before the tables) and `<section>.md` (after them;
//! `commandstats-after.md` for the commandstats section, whose `commandstats.md` is the record
//! of the before run), included verbatim. Plots (`<run>.svg` beside `<run>.json`) are copied into `--plots` and
//! linked.

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The folder the scenario scripts wrote into (one subfolder per section).
    #[arg(long, default_value = "target/bench")]
    results: PathBuf,

    /// The Markdown file to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,

    /// Human-written prose included under each section.
    #[arg(long, default_value = "loadtest/notes")]
    notes: PathBuf,

    /// Where the plots are copied; links are relative to --out's folder.
    #[arg(long, default_value = "docs/benchmarks")]
    plots: PathBuf,

    /// Only these sections (default: all), e.g. `--only fanout`.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Intake,
    Fanout,
    Sse,
    Webhooks,
    E2e,
    Commandstats,
    Scale,
    Workflow,
}

impl Section {
    const ALL: [Section; 8] = [
        Section::Intake,
        Section::Fanout,
        Section::Sse,
        Section::Webhooks,
        Section::E2e,
        Section::Commandstats,
        Section::Scale,
        Section::Workflow,
    ];

    fn dir(self) -> &'static str {
        match self {
            Section::Intake => "intake",
            Section::Fanout => "fanout",
            Section::Sse => "sse",
            Section::Webhooks => "webhooks",
            Section::E2e => "e2e",
            Section::Commandstats => "commandstats",
            Section::Scale => "scale",
            Section::Workflow => "workflow",
        }
    }

    /// The prose after the section's tables. `commandstats.md` is the record of the before run
    /// (issue 11), far longer than a section's analysis, so that section reads its own file.
    fn notes_file(self) -> String {
        match self {
            Section::Commandstats => "commandstats-after.md".into(),
            s => format!("{}.md", s.dir()),
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::Intake => "Order intake",
            Section::Fanout => "WebSocket fan-out",
            Section::Sse => "Server-Sent Events beside WebSocket",
            Section::Webhooks => "Webhook deliveries",
            Section::E2e => "End to end",
            Section::Commandstats => "Redis commands and Redis CPU per order and per delivery",
            Section::Scale => "Scale on Redis Cluster",
            Section::Workflow => "Workflow steps",
        }
    }

    fn script(self) -> String {
        format!("loadtest/scenarios/{}.sh", self.dir())
    }
}

/// One result file.
#[derive(Clone, Debug)]
pub struct Run {
    /// File name without `.json`.
    pub stem: String,
    pub v: Value,
    /// Link to the run's plot, if it has one.
    pub plot: Option<String>,
}

/// Everything one section is rendered from.
#[derive(Clone, Debug)]
pub struct SectionInput {
    pub section: Section,
    /// The folder's `manifest.json` (written by the script).
    pub manifest: Option<Value>,
    pub runs: Vec<Run>,
    pub method: Option<String>,
    pub notes: Option<String>,
}

impl SectionInput {
    fn of(&self, scenario: &str) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |r| s(&r.v, "scenario") == Some(scenario))
    }
}

// ---- reading the results --------------------------------------------------------------------

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `to` relative to the folder `from` when it lies inside it (both as given, made absolute
/// against the current folder); else `to` as given.
fn relative_link(from_dir: &Path, to: &Path) -> String {
    let abs = |p: &Path| {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (from, to_abs) = (abs(from_dir), abs(to));
    let rel = to_abs.strip_prefix(&from).unwrap_or(to);
    rel.to_string_lossy().replace('\\', "/")
}

/// Removes the section's plots an earlier report copied into `plots` (`<section>-*.svg`), so
/// that a run no longer in the results leaves no plot behind.
fn remove_old_plots(plots: &Path, section: Section) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(plots) else {
        return Ok(()); // not there yet
    };
    let prefix = format!("{}-", section.dir());
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".svg")) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Loads one section's folder: every `*.json` with a `scenario` (sorted by name), the
/// manifest, the notes, and copies each run's plot into `plots` (named `<section>-<run>.svg`).
fn load_section(args: &ReportArgs, section: Section) -> anyhow::Result<SectionInput> {
    let dir = args.results.join(section.dir());
    let mut paths = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let out_dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // --plots naming the results folder itself: link the plots where they are.
    let in_place = std::fs::canonicalize(&args.plots).ok() == std::fs::canonicalize(&dir).ok();
    if !in_place {
        remove_old_plots(&args.plots, section)?;
    }
    let mut runs = Vec::new();
    let mut manifest = None;
    for path in paths {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let v = read_json(&path)?;
        if stem == "manifest" {
            manifest = Some(v);
            continue;
        }
        if v.get("scenario").is_none() {
            continue;
        }
        let svg = path.with_extension("svg");
        let plot = if !svg.is_file() {
            None
        } else if in_place {
            Some(relative_link(out_dir, &svg))
        } else {
            std::fs::create_dir_all(&args.plots)
                .with_context(|| format!("creating {}", args.plots.display()))?;
            let target = args.plots.join(format!("{}-{stem}.svg", section.dir()));
            std::fs::copy(&svg, &target)
                .with_context(|| format!("copying {} to {}", svg.display(), target.display()))?;
            Some(relative_link(out_dir, &target))
        };
        runs.push(Run { stem, v, plot });
    }
    Ok(SectionInput {
        section,
        manifest,
        runs,
        method: read_optional(&args.notes.join(format!("{}-method.md", section.dir())))?,
        notes: read_optional(&args.notes.join(section.notes_file()))?,
    })
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let sections = if args.only.is_empty() {
        Section::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let inputs = sections
        .iter()
        .map(|&s| load_section(&args, s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A one-section summary (the scripts' summary.md) goes without the document's intro.
    let intro = if args.only.is_empty() {
        read_optional(&args.notes.join("intro.md"))?
    } else {
        None
    };
    let text = render(intro.as_deref(), &inputs, &args.results.to_string_lossy());
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "report: {} written from {} ({} runs)",
        args.out.display(),
        args.results.display(),
        inputs.iter().map(|i| i.runs.len()).sum::<usize>()
    );
    Ok(())
}

// ---- formatting -----------------------------------------------------------------------------

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn f(v: &Value, path: &str) -> Option<f64> {
    at(v, path).as_f64()
}

fn s<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path).as_str()
}

/// A whole number with thousands separators.
fn int(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn int_or_dash(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), int)
}

/// Milliseconds with about three significant digits.
fn ms(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v >= 100.0 => int(v),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `p50 / p99 / p99.9` (or the given keys) of a latency summary at `path`.
fn lat(v: &Value, path: &str, keys: &[&str]) -> String {
    if at(v, path).is_null() {
        return "no samples".into();
    }
    keys.iter()
        .map(|k| ms(f(v, &format!("{path}.{k}"))))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn percent(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

fn plot_cell(r: &Run) -> String {
    r.plot
        .as_ref()
        .map_or_else(String::new, |p| format!("[plot]({p})"))
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

/// A target from the issues and how the run stands against it.
struct Target {
    what: String,
    measured: String,
    /// `None`: not measured in these results.
    met: Option<bool>,
}

impl Target {
    fn new(what: impl Into<String>, measured: impl Into<String>, met: Option<bool>) -> Self {
        Self {
            what: what.into(),
            measured: measured.into(),
            met,
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**NOT met**",
            None => "not measured",
        }
    }
}

fn targets(out: &mut String, title: &str, ts: &[Target]) {
    let rows: Vec<Vec<String>> = ts
        .iter()
        .map(|t| vec![t.what.clone(), t.measured.clone(), t.verdict().into()])
        .collect();
    let _ = writeln!(out, "### Where Herald stands against the targets\n");
    table(out, &[title, "measured", "met?"], &rows);
}

fn nofile_text(v: &Value) -> String {
    let lim = |k: &str| {
        at(v, k)
            .as_u64()
            .map_or_else(|| "unlimited".into(), |n| int(n as f64))
    };
    if v.is_null() {
        "unknown".into()
    } else {
        format!("soft {} / hard {}", lim("soft"), lim("hard"))
    }
}

/// The machine facts line: from the first run's `machine` and the manifest.
fn machine_line(input: &SectionInput) -> String {
    let m = input
        .runs
        .iter()
        .map(|r| &r.v["machine"])
        .find(|m| !m.is_null())
        .unwrap_or(&Value::Null);
    let man = input.manifest.as_ref().unwrap_or(&Value::Null);
    let mut parts = Vec::new();
    if let Some(c) = f(m, "cores") {
        let model = s(m, "cpu_model").map_or_else(String::new, |m| format!(" ({m})"));
        parts.push(format!("{} cores{model}", int(c)));
    }
    if let Some(kib) = f(m, "memory_kib") {
        parts.push(format!("{:.0} GiB", kib / 1024.0 / 1024.0));
    }
    if let Some(k) = s(m, "kernel") {
        parts.push(
            format!("{} {k}", s(m, "os").unwrap_or(""))
                .trim()
                .to_string(),
        );
    }
    if let Some(r) = s(man, "redis") {
        parts.push(format!("Redis {r}"));
    }
    let mut line = format!(
        "Machine: {}.",
        if parts.is_empty() {
            "not recorded".into()
        } else {
            parts.join(", ")
        }
    );
    if let Some(h) = s(man, "herald") {
        let _ = write!(line, " Herald at `{h}`.");
    }
    if !m["nofile"].is_null() {
        let _ = write!(
            line,
            " Load generator open-file limit: {}.",
            nofile_text(&m["nofile"])
        );
    }
    if let Some(note) = s(man, "setup") {
        let _ = write!(line, " {note}");
    }
    line
}

fn header(out: &mut String, input: &SectionInput) {
    let _ = writeln!(out, "## {}\n", input.section.title());
    let command = input
        .manifest
        .as_ref()
        .and_then(|m| s(m, "command"))
        .map_or_else(|| input.section.script(), str::to_string);
    let _ = writeln!(out, "```sh\n{command}\n```\n");
    if let Some(m) = &input.method {
        let _ = writeln!(out, "{}\n", m.trim_end());
    }
    let _ = writeln!(out, "{}\n", machine_line(input));
}

fn footer(out: &mut String, input: &SectionInput, results: &str) {
    if let Some(n) = &input.notes {
        let _ = writeln!(out, "{}\n", n.trim_end());
    }
    let _ = writeln!(
        out,
        "Raw results (JSON and SVG per run) are written to `{results}/{}/`.\n",
        input.section.dir()
    );
}

// ---- the document ---------------------------------------------------------------------------

/// The whole document. `results` is only quoted (where the raw results are).
pub fn render(intro: Option<&str>, inputs: &[SectionInput], results: &str) -> String {
    let mut out = String::from("# Benchmarks\n\n");
    if let Some(i) = intro {
        let _ = writeln!(out, "{}\n", i.trim_end());
    }
    let _ = writeln!(
        out,
        "<!-- Generated by `herald-loadtest report` (loadtest/scenarios/all.sh) from {results}; \
         edit the prose in loadtest/notes/, not here. -->\n"
    );
    for input in inputs {
        header(&mut out, input);
        let before = out.len();
        match input.section {
            Section::Intake => intake(&mut out, input),
            Section::Fanout => fanout(&mut out, input),
            Section::Sse => sse(&mut out, input),
            Section::Webhooks => webhooks(&mut out, input),
            Section::E2e => e2e(&mut out, input),
            Section::Commandstats => commandstats(&mut out, input),
            Section::Scale => scale(&mut out, input),
            Section::Workflow => workflow(&mut out, input),
        }
        if out.len() == before {
            let _ = writeln!(
                out,
                "No results in `{results}/{}/`: run `{}`.\n",
                input.section.dir(),
                input.section.script()
            );
        }
        footer(&mut out, input, results);
    }
    out
}

// ---- intake ---------------------------------------------------------------------------------

/// The engine an intake run measured: the first word of its label (the script's convention).
fn engine(r: &Run) -> &str {
    s(&r.v, "label")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("")
}

/// The Redis `appendfsync` policy of an intake or redis-benchmark run (`redis_appendfsync`,
/// recorded by intake.sh); results without one were measured with `everysec`, the scripts'
/// only policy before.
fn appendfsync(r: &Run) -> &str {
    s(&r.v, "redis_appendfsync").unwrap_or("everysec")
}

/// Sorts the policies as they are read: the default first, then the stricter one.
fn policy_order(policy: &str) -> (u8, String) {
    let rank = match policy {
        "everysec" => 0,
        "always" => 1,
        _ => 2,
    };
    (rank, policy.to_string())
}

fn intake(out: &mut String, input: &SectionInput) {
    let mut runs: Vec<&Run> = input.of("intake").collect();
    if runs.is_empty() {
        return;
    }
    let mut policies: Vec<&str> = runs
        .iter()
        .filter(|r| engine(r) == "redis")
        .map(|r| appendfsync(r))
        .collect();
    policies.sort_by_key(|p| policy_order(p));
    policies.dedup();
    // With one policy the runs are named as before; with several, each Redis run says its own.
    let engine_name = |r: &Run| match engine(r) {
        "redis" if policies.len() > 1 => format!("redis ({})", appendfsync(r)),
        "reference" => "reference (minimal hyper server, 202 only)".to_string(),
        e => e.to_string(),
    };
    runs.sort_by_key(|r| {
        (
            engine(r).to_string(),
            policy_order(appendfsync(r)),
            s(&r.v, "mode") == Some("open"),
            f(&r.v, "clients").unwrap_or(0.0) as u64,
            f(&r.v, "rate").unwrap_or(0.0) as u64,
        )
    });
    let mut ceilings: Vec<&Run> = input.of("redis-benchmark").collect();
    ceilings.sort_by_key(|c| {
        (
            policy_order(appendfsync(c)),
            f(&c.v, "pipeline").unwrap_or(1.0) as u64,
            f(&c.v, "clients").unwrap_or(0.0) as u64,
        )
    });
    let ceiling_at = |clients: f64, policy: &str| {
        ceilings
            .iter()
            .find(|c| {
                f(&c.v, "clients") == Some(clients)
                    && f(&c.v, "pipeline") == Some(1.0)
                    && appendfsync(c) == policy
            })
            .and_then(|c| f(&c.v, "requests_per_s"))
    };
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let v = &r.v;
            let run = match (s(v, "mode"), f(v, "clients"), f(v, "rate")) {
                (Some("open"), _, Some(rate)) => {
                    format!("{}, {}/s open loop", engine_name(r), int(rate))
                }
                (_, Some(c), _) => format!(
                    "{}, {} client{}",
                    engine_name(r),
                    int(c),
                    if c == 1.0 { "" } else { "s" }
                ),
                _ => s(v, "label").unwrap_or(&r.stem).to_string(),
            };
            let tput = f(v, "throughput_per_s");
            let ceiling = match (engine(r), s(v, "mode"), f(v, "clients")) {
                ("redis", Some("closed"), Some(c)) => ceiling_at(c, appendfsync(r))
                    .zip(tput)
                    .map_or_else(String::new, |(c, t)| percent(t / c)),
                _ => String::new(),
            };
            let errors: f64 = v["errors"]
                .as_object()
                .map(|e| e.values().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0);
            vec![
                run,
                int_or_dash(tput),
                lat(v, "accept_latency_ms", &["p50", "p99", "p999"]),
                if v["confirm_latency_ms"].is_null() {
                    String::new()
                } else {
                    lat(v, "confirm_latency_ms", &["p50", "p99"])
                },
                int(errors),
                ceiling,
                plot_cell(r),
            ]
        })
        .collect();
    table(
        out,
        &[
            "run",
            "accepted/s",
            "accept p50 / p99 / p99.9 ms",
            "accept -> confirmed p50 / p99 ms",
            "errors",
            "of the XADD ceiling",
            "plot",
        ],
        &rows,
    );
    if !ceilings.is_empty() {
        let _ = writeln!(
            out,
            "Same run, the ceiling: Redis alone, one `XADD` of an event-sized entry per request \
             (`redis-benchmark`, same server, same persistence):\n"
        );
        let rows: Vec<Vec<String>> = ceilings
            .iter()
            .map(|c| {
                let clients = f(&c.v, "clients").unwrap_or(0.0);
                let pipeline = f(&c.v, "pipeline").unwrap_or(1.0);
                let mut name = if pipeline > 1.0 {
                    format!("{} clients, pipeline {}", int(clients), int(pipeline))
                } else {
                    format!(
                        "{} client{}",
                        int(clients),
                        if clients == 1.0 { "" } else { "s" }
                    )
                };
                if policies.len() > 1 {
                    let _ = write!(name, ", appendfsync {}", appendfsync(c));
                }
                vec![
                    name,
                    int_or_dash(f(&c.v, "requests_per_s")),
                    ms(f(&c.v, "p50_ms")),
                ]
            })
            .collect();
        table(
            out,
            &["redis-benchmark XADD", "requests/s", "p50 ms"],
            &rows,
        );
    }

    // The targets are judged on the production setting, everysec.
    let closed_at = |eng: &str, clients: f64, policy: &str| {
        runs.iter().find(|r| {
            engine(r) == eng
                && s(&r.v, "mode") == Some("closed")
                && f(&r.v, "clients") == Some(clients)
                && (eng != "redis" || appendfsync(r) == policy)
        })
    };
    if policies.len() > 1 {
        let at16: Vec<(&str, Option<&Run>)> = policies
            .iter()
            .map(|&p| (p, closed_at("redis", 16.0, p).copied()))
            .collect();
        fsync_cost(out, &at16);
    }
    let mut ts = Vec::new();
    match closed_at("redis", 16.0, "everysec") {
        Some(r) => {
            let t = f(&r.v, "throughput_per_s").unwrap_or(0.0);
            let p99 = f(&r.v, "accept_latency_ms.p99");
            ts.push(Target::new(
                "Redis engine >= 20,000 accepted/s at 16 clients",
                format!("{}/s", int(t)),
                Some(t >= 20_000.0),
            ));
            ts.push(Target::new(
                "Redis engine p99 < 10 ms at 16 clients",
                format!("{} ms", ms(p99)),
                Some(p99.is_some_and(|p| p < 10.0)),
            ));
        }
        None => {
            ts.push(Target::new(
                "Redis engine >= 20,000 accepted/s at 16 clients",
                "no 16-client Redis run",
                None,
            ));
            ts.push(Target::new(
                "Redis engine p99 < 10 ms at 16 clients",
                "no 16-client Redis run",
                None,
            ));
        }
    }
    // Issue 11 (Redis engine v2): each figure beside the same run's reference.
    let what = "Redis engine >= 30 % of the same run's redis-benchmark XADD rate at 16 clients";
    let redis16 = closed_at("redis", 16.0, "everysec").and_then(|r| f(&r.v, "throughput_per_s"));
    ts.push(match (redis16, ceiling_at(16.0, "everysec")) {
        (Some(t), Some(c)) if c > 0.0 => Target::new(
            what,
            format!("{} ({}/s of {}/s)", percent(t / c), int(t), int(c)),
            Some(t / c >= 0.30),
        ),
        (None, _) => Target::new(what, "no 16-client Redis run", None),
        _ => Target::new(what, "no 16-client XADD run", None),
    });
    let references: Vec<&Run> = runs
        .iter()
        .copied()
        .filter(|r| engine(r) == "reference" && s(&r.v, "mode") == Some("closed"))
        .collect();
    if !references.is_empty() {
        memory_beside_reference(out, &runs, &references);
    }
    let tput_at = |eng: &str, clients: f64| {
        closed_at(eng, clients, "everysec").and_then(|r| f(&r.v, "throughput_per_s"))
    };
    let what = "memory engine >= 50,000 accepted/s at 64 clients, beside a minimal hyper server \
                answering 202 to the same POST";
    ts.push(
        match (tput_at("memory", 64.0), tput_at("reference", 64.0)) {
            (Some(t), reference) => Target::new(
                what,
                format!(
                    "{}/s{}",
                    int(t),
                    reference.filter(|r| *r > 0.0).map_or_else(
                        || "; no 64-client reference run".into(),
                        |r| format!(", {} of the hyper server's {}/s", percent(t / r), int(r))
                    )
                ),
                Some(t >= 50_000.0),
            ),
            (None, _) => Target::new(what, "no 64-client memory run", None),
        },
    );
    let best_memory = runs
        .iter()
        .filter(|r| engine(r) == "memory" && s(&r.v, "mode") == Some("closed"))
        .filter_map(|r| Some((f(&r.v, "throughput_per_s")?, f(&r.v, "clients")?)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    ts.push(match best_memory {
        Some((t, c)) => Target::new(
            "memory engine >= 50,000 accepted/s",
            format!("{}/s (best run: {} clients)", int(t), int(c)),
            Some(t >= 50_000.0),
        ),
        None => Target::new(
            "memory engine >= 50,000 accepted/s",
            "no closed-loop memory run",
            None,
        ),
    });
    targets(out, "target (pipeline issue; issue 11)", &ts);
}

/// Herald's memory engine beside the minimal hyper server answering 202 (`herald-loadtest
/// intake-reference`), per client count measured on both: the share of a bare HTTP server's
/// rate that Herald's intake keeps.
fn memory_beside_reference(out: &mut String, runs: &[&Run], references: &[&Run]) {
    let rows: Vec<Vec<String>> = references
        .iter()
        .filter_map(|rf| {
            let clients = f(&rf.v, "clients")?;
            let memory = runs.iter().find(|r| {
                engine(r) == "memory"
                    && s(&r.v, "mode") == Some("closed")
                    && f(&r.v, "clients") == Some(clients)
            });
            let (m, x) = (
                memory.and_then(|r| f(&r.v, "throughput_per_s")),
                f(&rf.v, "throughput_per_s"),
            );
            Some(vec![
                int(clients),
                int_or_dash(m),
                int_or_dash(x),
                match (m, x) {
                    (Some(m), Some(x)) if x > 0.0 => percent(m / x),
                    _ => "-".into(),
                },
                ms(memory.and_then(|r| f(&r.v, "accept_latency_ms.p99"))),
                ms(f(&rf.v, "accept_latency_ms.p99")),
            ])
        })
        .collect();
    let _ = writeln!(
        out,
        "Same run, the memory engine beside a minimal hyper server answering 202 to the same POST \
         (`herald-loadtest intake-reference`: reads the body, parses the JSON, no auth, no \
         storage):\n"
    );
    table(
        out,
        &[
            "clients",
            "memory accepted/s",
            "hyper 202 server accepted/s",
            "Herald as a share of it",
            "memory p99 ms",
            "hyper 202 server p99 ms",
        ],
        &rows,
    );
}

/// What each `appendfsync` policy costs: the Redis runs at 16 clients side by side, and each
/// policy's throughput as a share of everysec's (same script run, fresh Redis per policy).
fn fsync_cost(out: &mut String, at16: &[(&str, Option<&Run>)]) {
    let tput = |r: Option<&Run>| r.and_then(|r| f(&r.v, "throughput_per_s"));
    let base = at16
        .iter()
        .find(|(p, _)| *p == "everysec")
        .and_then(|(_, r)| tput(*r));
    let rows: Vec<Vec<String>> = at16
        .iter()
        .map(|&(p, r)| {
            vec![
                format!("`{p}`"),
                r.map_or_else(
                    || "no 16-client run".into(),
                    |r| int_or_dash(f(&r.v, "throughput_per_s")),
                ),
                ms(r.and_then(|r| f(&r.v, "accept_latency_ms.p99"))),
                match (p, tput(r), base) {
                    ("everysec", ..) => String::new(),
                    (_, Some(t), Some(b)) if b > 0.0 => format!("{:.2}", t / b),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "The price of durability: the Redis engine at 16 clients under each `appendfsync` policy \
         (same script run, a fresh redis-server per policy):\n"
    );
    table(
        out,
        &[
            "appendfsync",
            "accepted/s at 16 clients",
            "accept p99 ms",
            "accepted/s, ratio to everysec",
        ],
        &rows,
    );
}

// ---- fan-out --------------------------------------------------------------------------------

/// A fan-out or idle run's name without its server: the file is `<server>-<name>.json`.
fn run_name(r: &Run) -> &str {
    r.stem.split_once('-').map_or(r.stem.as_str(), |(_, n)| n)
}

fn server(r: &Run) -> &str {
    s(&r.v, "target")
        .or_else(|| r.stem.split('-').next())
        .unwrap_or("")
}

fn rate_text(v: &Value) -> String {
    match &v["rate"] {
        Value::String(m) if m == "max" => "max".into(),
        r => r
            .as_f64()
            .map_or_else(|| "-".into(), |r| format!("{} ev/s", int(r))),
    }
}

fn fanout_describe(v: &Value) -> String {
    format!(
        "{}, {} conns, {}",
        s(v, "mode").unwrap_or("?"),
        int(f(v, "connections").unwrap_or(0.0)),
        rate_text(v)
    )
}

/// The same configuration measured on Herald and on the reference.
type Pair<'a> = (Option<&'a Run>, Option<&'a Run>);

/// Fan-out runs with SSE streams beside the WebSocket subscribers (`fanout --sse-connections`):
/// the two transports' publish -> receive latency from the same events, same minutes.
fn sse(out: &mut String, input: &SectionInput) {
    let mut runs: Vec<&Run> = input
        .of("fanout")
        .filter(|r| !r.v["sse"].is_null())
        .collect();
    if runs.is_empty() {
        return;
    }
    runs.sort_by_key(|r| {
        (
            f(&r.v, "connections").unwrap_or(0.0) as u64,
            f(&r.v, "rate").unwrap_or(0.0) as u64,
        )
    });
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let v = &r.v;
            let ratio = match (f(v, "sse.latency_ms.p99"), f(v, "latency_ms.p99")) {
                (Some(sse), Some(ws)) if ws > 0.0 => format!("{:.2}", sse / ws),
                _ => "-".into(),
            };
            vec![
                format!(
                    "{} WebSocket + {} SSE, {} events/s",
                    int_or_dash(f(v, "connected")),
                    int_or_dash(f(v, "sse.connected")),
                    int_or_dash(f(v, "rate"))
                ),
                format!(
                    "{} / {}",
                    int_or_dash(f(v, "deliveries_per_s")),
                    int_or_dash(f(v, "sse.deliveries_per_s"))
                ),
                lat(v, "latency_ms", &["p50", "p99"]),
                lat(v, "sse.latency_ms", &["p50", "p99"]),
                ratio,
                format!(
                    "{} / {}",
                    int_or_dash(f(v, "missing")),
                    int_or_dash(f(v, "sse.missing"))
                ),
                plot_cell(r),
            ]
        })
        .collect();
    table(
        out,
        &[
            "run",
            "deliveries/s (WS / SSE)",
            "WebSocket p50 / p99 ms",
            "SSE p50 / p99 ms",
            "SSE p99 / WS p99",
            "missing (WS / SSE)",
            "plot",
        ],
        &rows,
    );
    let at_1000 = runs
        .iter()
        .filter(|r| f(&r.v, "sse.connected").unwrap_or(0.0) >= 1000.0)
        .min_by_key(|r| f(&r.v, "rate").unwrap_or(0.0) as u64);
    let target = match at_1000 {
        Some(r) => Target::new(
            "SSE publish -> receive p50 / p99 at 1,000 streams, beside the WebSocket path of the same run",
            format!(
                "SSE {} ms, WebSocket {} ms ({} events/s, {} SSE deliveries missing)",
                lat(&r.v, "sse.latency_ms", &["p50", "p99"]),
                lat(&r.v, "latency_ms", &["p50", "p99"]),
                int_or_dash(f(&r.v, "rate")),
                int_or_dash(f(&r.v, "sse.missing")),
            ),
            Some(f(&r.v, "sse.missing") == Some(0.0) && !r.v["sse"]["latency_ms"].is_null()),
        ),
        None => Target::new(
            "SSE publish -> receive p50 / p99 at 1,000 streams, beside the WebSocket path of the same run",
            "no run with 1,000 SSE streams",
            None,
        ),
    };
    targets(out, "issue 14", &[target]);
}

fn fanout(out: &mut String, input: &SectionInput) {
    let runs: Vec<&Run> = input.of("fanout").collect();
    let idle: Vec<&Run> = input.of("idle").collect();
    if runs.is_empty() && idle.is_empty() {
        return;
    }
    // Runs by name, Herald and the reference side by side.
    let mut by_name: BTreeMap<(u8, u64, u64, String), Pair> = BTreeMap::new();
    let mut stalled: BTreeMap<String, Pair> = BTreeMap::new();
    for r in &runs {
        let name = run_name(r).to_string();
        let herald = server(r) == "herald";
        if name.starts_with("stalled") {
            let key = server(r).to_string();
            let e = stalled.entry(key).or_default();
            if f(&r.v, "stalled").unwrap_or(0.0) > 0.0 {
                e.1 = Some(r);
            } else {
                e.0 = Some(r);
            }
            continue;
        }
        let kind = match s(&r.v, "mode") {
            Some("broadcast") => 0,
            _ => 1,
        };
        let conns = f(&r.v, "connections").unwrap_or(0.0) as u64;
        let rate = f(&r.v, "rate").map_or(u64::MAX, |r| r as u64);
        let e = by_name.entry((kind, conns, rate, name)).or_default();
        if herald {
            e.0 = Some(r);
        } else {
            e.1 = Some(r);
        }
    }
    let per_s = |r: Option<&Run>| r.and_then(|r| f(&r.v, "deliveries_per_s"));
    let lat3 = |r: Option<&Run>| {
        r.map_or_else(
            || "-".into(),
            |r| lat(&r.v, "latency_ms", &["p50", "p99", "p999"]),
        )
    };
    let missing = |r: Option<&Run>| int_or_dash(r.and_then(|r| f(&r.v, "missing")));
    let plots = |h: Option<&Run>, rf: Option<&Run>| {
        [h.map(plot_cell), rf.map(plot_cell)]
            .into_iter()
            .flatten()
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !by_name.is_empty() {
        let rows: Vec<Vec<String>> = by_name
            .values()
            .map(|&(h, rf)| {
                let any = h.or(rf).map(|r| &r.v).unwrap_or(&Value::Null);
                let ratio = match (per_s(h), per_s(rf)) {
                    (Some(a), Some(b)) if b > 0.0 => percent(a / b),
                    _ => "-".into(),
                };
                vec![
                    fanout_describe(any),
                    int_or_dash(per_s(h)),
                    int_or_dash(per_s(rf)),
                    ratio,
                    lat3(h),
                    lat3(rf),
                    missing(h),
                    missing(rf),
                    plots(h, rf),
                ]
            })
            .collect();
        table(
            out,
            &[
                "run",
                "Herald deliveries/s",
                "reference deliveries/s",
                "ratio",
                "Herald p50 / p99 / p99.9 ms",
                "reference p50 / p99 / p99.9 ms",
                "Herald missing",
                "reference missing",
                "plots",
            ],
            &rows,
        );
    }
    let rise = |(base, st): (Option<&Run>, Option<&Run>)| {
        let b = base.and_then(|r| f(&r.v, "latency_ms.p99"))?;
        let s = st.and_then(|r| f(&r.v, "latency_ms.p99"))?;
        (b > 0.0).then(|| s / b - 1.0)
    };
    if !stalled.is_empty() {
        let any = stalled
            .values()
            .find_map(|(_, s)| *s)
            .map(|r| &r.v)
            .unwrap_or(&Value::Null);
        let _ = writeln!(
            out,
            "Stalled clients ({} broadcast connections at {}; {} of them stop reading after \
             subscribing):\n",
            int(f(any, "connections").unwrap_or(0.0)),
            rate_text(any),
            int(f(any, "stalled").unwrap_or(0.0)),
        );
        let rows: Vec<Vec<String>> = stalled
            .iter()
            .map(|(srv, &(b, st))| {
                let after = st
                    .and_then(|r| r.v["stalled_after_run"].as_object())
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                vec![
                    srv.clone(),
                    format!("{} ms", ms(b.and_then(|r| f(&r.v, "latency_ms.p99")))),
                    format!("{} ms", ms(st.and_then(|r| f(&r.v, "latency_ms.p99")))),
                    rise((b, st)).map_or_else(|| "-".into(), |x| format!("{:+.0} %", x * 100.0)),
                    after,
                    plots(b, st),
                ]
            })
            .collect();
        table(
            out,
            &[
                "server",
                "others' p99, none stalled",
                "others' p99, stalled",
                "rise",
                "stalled connections after the run",
                "plots",
            ],
            &rows,
        );
    }
    if !idle.is_empty() {
        let _ = writeln!(
            out,
            "Idle connections (each acknowledged and holding one targeted subscription; server \
             RSS after it settles):\n"
        );
        let rows: Vec<Vec<String>> = idle
            .iter()
            .map(|r| {
                let v = &r.v;
                vec![
                    s(v, "label").unwrap_or(server(r)).to_string(),
                    int_or_dash(f(v, "connected")),
                    format!(
                        "{} -> {} KiB",
                        int_or_dash(f(v, "server_rss_before_kib")),
                        int_or_dash(f(v, "server_rss_after_kib"))
                    ),
                    f(v, "server_kib_per_connection")
                        .map_or_else(|| "-".into(), |k| format!("{k:.2} KiB")),
                ]
            })
            .collect();
        table(
            out,
            &[
                "server",
                "connections",
                "RSS before -> after",
                "per connection",
            ],
            &rows,
        );
    }
    // The load generator's processes and their descriptor limits, for the biggest run.
    if let Some(big) = runs
        .iter()
        .max_by_key(|r| f(&r.v, "connections").unwrap_or(0.0) as u64)
        && let Some(ps) = big.v["processes"].as_array()
    {
        let list: Vec<String> = ps
            .iter()
            .map(|p| {
                format!(
                    "{} ({} connections, nofile {})",
                    s(p, "role").unwrap_or("?"),
                    int(f(p, "connections").unwrap_or(0.0)),
                    nofile_text(&p["nofile"])
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "Load generator processes in the {}-connection runs: {}.\n",
            int(f(&big.v, "connections").unwrap_or(0.0)),
            list.join("; ")
        );
    }

    let mut ts = Vec::new();
    for (&(kind, ..), &(h, rf)) in &by_name {
        let Some(any) = h.or(rf) else { continue };
        if kind != 0 || !matches!(&any.v["rate"], Value::String(m) if m == "max") {
            continue;
        }
        let what = format!(
            "max-rate broadcast >= 50 % of the reference ({} connections)",
            int(f(&any.v, "connections").unwrap_or(0.0))
        );
        ts.push(match (per_s(h), per_s(rf)) {
            (Some(a), Some(b)) if b > 0.0 => Target::new(what, percent(a / b), Some(a / b >= 0.5)),
            _ => Target::new(what, "needs both servers' runs", None),
        });
    }
    let targeted: Vec<&Run> = by_name
        .iter()
        .filter(|(k, _)| k.0 == 1)
        .filter_map(|(_, (h, _))| *h)
        .collect();
    if targeted.is_empty() {
        ts.push(Target::new(
            "targeted (10,000 connections, 10,000 events/s) p99 <= 5 ms",
            "no targeted Herald run",
            None,
        ));
    }
    for r in targeted {
        let p99 = f(&r.v, "latency_ms.p99");
        let (c, rate) = (f(&r.v, "connections"), f(&r.v, "rate"));
        let size = if c == Some(10_000.0) && rate == Some(10_000.0) {
            String::new()
        } else {
            format!(" at {} (smaller than the target's)", fanout_describe(&r.v))
        };
        ts.push(Target::new(
            "targeted (10,000 connections, 10,000 events/s) p99 <= 5 ms",
            format!("{} ms{size}", ms(p99)),
            Some(p99.is_some_and(|p| p <= 5.0) && f(&r.v, "missing") == Some(0.0)),
        ));
    }
    let what = "5 % stalled clients raise the others' p99 by under 10 %";
    ts.push(match stalled.get("herald").copied() {
        Some(pair) => match rise(pair) {
            Some(x) => Target::new(what, format!("{:+.0} %", x * 100.0), Some(x < 0.10)),
            None => Target::new(what, "needs both stalled runs", None),
        },
        None => Target::new(what, "no stalled Herald run", None),
    });
    let what = "<= 8 KiB RSS per idle connection at 10,000";
    ts.push(
        match idle
            .iter()
            .find(|r| server(r) == "herald" || s(&r.v, "label") == Some("herald"))
        {
            Some(r) => {
                let k = f(&r.v, "server_kib_per_connection").unwrap_or(f64::INFINITY);
                let n = f(&r.v, "connected").unwrap_or(0.0);
                let size = if n >= 10_000.0 {
                    String::new()
                } else {
                    format!(" at {} connections (fewer than the target's)", int(n))
                };
                Target::new(what, format!("{k:.2} KiB{size}"), Some(k <= 8.0))
            }
            None => Target::new(what, "no Herald idle run", None),
        },
    );
    targets(out, "target (subscriptions issue)", &ts);
}

// ---- webhooks -------------------------------------------------------------------------------

fn webhooks(out: &mut String, input: &SectionInput) {
    let runs: Vec<&Run> = input.of("webhooks").collect();
    if runs.is_empty() {
        return;
    }
    let reference = runs.iter().find(|r| s(&r.v, "target") == Some("reference"));
    let ceiling = reference.and_then(|r| f(&r.v, "deliveries_per_s"));
    // The ceiling first, then Herald's runs.
    let mut throughput: Vec<&Run> = runs
        .iter()
        .copied()
        .filter(|r| s(&r.v, "mode") == Some("throughput"))
        .collect();
    throughput.sort_by_key(|r| s(&r.v, "target") != Some("reference"));
    let describe = |v: &Value| {
        if s(v, "target") == Some("reference") {
            return format!(
                "sink ceiling (load tool -> sink, {} connections)",
                int(f(v, "connections").unwrap_or(0.0))
            );
        }
        let mut d = format!(
            "Herald, {}, maxInFlight {}",
            match &v["rate"] {
                Value::String(_) => "max rate".into(),
                r => format!("{} events/s", int(r.as_f64().unwrap_or(0.0))),
            },
            f(v, "max_in_flight").map_or_else(|| "default".into(), int)
        );
        let (fail, stall) = (
            f(v, "fail_percent").unwrap_or(0.0),
            f(v, "stall_percent").unwrap_or(0.0),
        );
        if fail > 0.0 || stall > 0.0 {
            let _ = write!(d, ", {fail} % answered 500, {stall} % stalled");
        }
        d
    };
    let rows: Vec<Vec<String>> = throughput
        .iter()
        .map(|r| {
            let v = &r.v;
            let d = f(v, "deliveries_per_s");
            // Only a run at the maximum rate reads as a share of the ceiling.
            let at_max = v["rate"].as_str() == Some("max");
            vec![
                describe(v),
                int_or_dash(d),
                match (d, ceiling) {
                    (Some(d), Some(c)) if c > 0.0 && at_max => percent(d / c),
                    _ => String::new(),
                },
                lat(v, "latency_ms", &["p50", "p99", "p999"]),
                int_or_dash(f(v, "invalid_signatures")),
                int_or_dash(f(v, "missing")),
                plot_cell(r),
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            out,
            &[
                "run",
                "deliveries/s (verified)",
                "of the sink's ceiling",
                "publish -> receive p50 / p99 / p99.9 ms",
                "invalid signatures",
                "missing",
                "plot",
            ],
            &rows,
        );
    }
    let lateness: Vec<&Run> = runs
        .iter()
        .copied()
        .filter(|r| s(&r.v, "mode") == Some("lateness"))
        .collect();
    if !lateness.is_empty() {
        let rows: Vec<Vec<String>> = lateness
            .iter()
            .map(|r| {
                let v = &r.v;
                vec![
                    format!(
                        "maxInFlight {}",
                        f(v, "max_in_flight").map_or_else(|| "default".into(), int)
                    ),
                    int_or_dash(f(v, "retries.failed_first")),
                    int_or_dash(f(v, "retries.received")),
                    int_or_dash(f(v, "retries.missing")),
                    lat(v, "lateness_ms", &["p50", "p99", "p999", "max"]),
                    int_or_dash(f(v, "retries.early")),
                    plot_cell(r),
                ]
            })
            .collect();
        table(
            out,
            &[
                "retry lateness",
                "retries scheduled",
                "received",
                "missing",
                "p50 / p99 / p99.9 / max ms",
                "early",
                "plot",
            ],
            &rows,
        );
    }

    let mut ts = Vec::new();
    let what = ">= 10,000 signed deliveries/s to a local keep-alive sink, ~1 KB bodies";
    let best = throughput
        .iter()
        .filter(|r| s(&r.v, "target") == Some("herald"))
        .filter_map(|r| f(&r.v, "deliveries_per_s"))
        .max_by(f64::total_cmp);
    ts.push(match best {
        Some(b) => Target::new(
            what,
            format!(
                "{}/s (best run){}",
                int(b),
                ceiling.map_or_else(String::new, |c| format!(
                    "; the sink's ceiling here: {}/s",
                    int(c)
                ))
            ),
            Some(b >= 10_000.0),
        ),
        None => Target::new(what, "no Herald throughput run", None),
    });
    let what = ">= 25 % of the sink's same-run ceiling (max rate, one endpoint, ~1 KB bodies)";
    let best_max = throughput
        .iter()
        .filter(|r| s(&r.v, "target") == Some("herald") && r.v["rate"].as_str() == Some("max"))
        .filter_map(|r| Some((f(&r.v, "deliveries_per_s")?, *r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    ts.push(match (best_max, ceiling) {
        (Some((b, r)), Some(c)) if c > 0.0 => Target::new(
            what,
            format!(
                "{} ({}/s of {}/s{})",
                percent(b / c),
                int(b),
                int(c),
                f(&r.v, "body_bytes_mean")
                    .map_or_else(String::new, |m| format!(", bodies {} bytes", int(m)))
            ),
            Some(b / c >= 0.25),
        ),
        (None, _) => Target::new(what, "no max-rate Herald run", None),
        _ => Target::new(what, "no ceiling run", None),
    });
    let what = "retry lateness p99 <= 50 ms with 10,000 retries scheduled";
    if lateness.is_empty() {
        ts.push(Target::new(what, "no lateness run", None));
    }
    for r in &lateness {
        let p99 = f(&r.v, "lateness_ms.p99");
        let n = f(&r.v, "retries.failed_first").unwrap_or(0.0);
        let missing = f(&r.v, "retries.missing").unwrap_or(0.0);
        let size = if n >= 10_000.0 {
            String::new()
        } else {
            " (fewer retries than the target's)".into()
        };
        ts.push(Target::new(
            what,
            format!(
                "{} ms, {} retries, {} missing{size}",
                ms(p99),
                int(n),
                int(missing)
            ),
            Some(p99.is_some_and(|p| p <= 50.0) && missing == 0.0),
        ));
    }
    let bad: f64 = runs
        .iter()
        .filter_map(|r| f(&r.v, "invalid_signatures"))
        .sum();
    let verified: f64 = runs
        .iter()
        .filter_map(|r| f(&r.v, "received_distinct"))
        .sum();
    ts.push(Target::new(
        "every delivery verifies",
        format!(
            "{} invalid signatures in {} deliveries",
            int(bad),
            int(verified)
        ),
        Some(bad == 0.0),
    ));
    targets(out, "target (webhooks issue)", &ts);
}

// ---- end to end -----------------------------------------------------------------------------

fn e2e(out: &mut String, input: &SectionInput) {
    let runs: Vec<&Run> = input.of("e2e").collect();
    if runs.is_empty() {
        return;
    }
    let label = |r: &Run| s(&r.v, "label").unwrap_or(&r.stem).to_string();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let v = &r.v;
            let errors: f64 = v["orders"]["errors"]
                .as_object()
                .map(|e| e.values().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0);
            vec![
                label(r),
                format!(
                    "{}/s for {} s",
                    int(f(v, "rate").unwrap_or(0.0)),
                    f(v, "duration_s").unwrap_or(0.0)
                ),
                s(v, "protocol").unwrap_or("-").to_string(),
                format!(
                    "{} / {}",
                    int_or_dash(f(v, "subscribers")),
                    int_or_dash(f(v, "endpoints"))
                ),
                format!(
                    "{} / {}",
                    int_or_dash(f(v, "orders.sent")),
                    int_or_dash(f(v, "orders.accepted"))
                ),
                int(errors),
                lat(v, "accept", &["p50", "p99", "p999"]),
                plot_cell(r),
            ]
        })
        .collect();
    table(
        out,
        &[
            "run",
            "orders in",
            "protocol",
            "subscribers / webhook endpoints",
            "orders sent / accepted",
            "errors",
            "accept p50 / p99 / p99.9 ms",
            "plot",
        ],
        &rows,
    );
    let mut rows = Vec::new();
    for r in &runs {
        for (path, name) in [("websocket", "WebSocket"), ("webhook", "webhook")] {
            let p = &r.v[path];
            // No path measured, or no webhook endpoint registered.
            if p.is_null() || (path == "webhook" && f(&r.v, "endpoints") == Some(0.0)) {
                continue;
            }
            rows.push(vec![
                label(r),
                name.to_string(),
                int_or_dash(f(p, "expected")),
                int_or_dash(f(p, "received")),
                int_or_dash(f(p, "missing")),
                int_or_dash(f(p, "duplicates")),
                int_or_dash(f(p, "bad_signatures")),
                lat(p, "accepted", &["p50", "p99", "p999"]),
                lat(p, "confirmed", &["p50", "p99", "p999"]),
            ]);
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "Notifications, to the event's arrival: `order.accepted` from the order's 202, \
             `order.confirmed` from its scheduled send:\n"
        );
        table(
            out,
            &[
                "run",
                "path",
                "expected",
                "received",
                "missing",
                "duplicates",
                "bad signatures",
                "order.accepted p50 / p99 / p99.9 ms",
                "order.confirmed p50 / p99 / p99.9 ms",
            ],
            &rows,
        );
    }
    // Webhook figures only count where an endpoint was registered.
    let sum = |path: &str| -> f64 {
        runs.iter()
            .filter(|r| !path.starts_with("webhook") || f(&r.v, "endpoints") != Some(0.0))
            .filter_map(|r| f(&r.v, path))
            .sum()
    };
    let missing = sum("websocket.missing") + sum("webhook.missing");
    let bad = sum("webhook.bad_signatures");
    let ts = [
        Target::new(
            "every accepted order's events reach every subscriber and endpoint",
            format!("{} missing", int(missing)),
            Some(missing == 0.0),
        ),
        Target::new(
            "every webhook delivery verifies",
            format!("{} bad signatures", int(bad)),
            Some(bad == 0.0),
        ),
    ];
    let _ = writeln!(
        out,
        "The issues set no latency target for this path; these are the run's own checks.\n"
    );
    targets(out, "check", &ts);
}

// ---- Redis commands per order and per delivery (issue 11) --------------------------------------

/// One unit's figures of the before run (issue 11), from `loadtest/notes/commandstats.md`:
/// Herald's engine at commit `8f059ad` (one partition, `{p0}`), two runs of
/// `loadtest/scenarios/commandstats.sh` with its defaults (20,000 orders and 10,000 deliveries
/// at 1,000/s). They are fixed history, so they live here rather than in a results folder a
/// new run would empty.
struct Before {
    unit: &'static str,
    units_name: &'static str,
    /// Per unit, run 1 and run 2, in the order of [`COMMANDSTATS_ROWS`].
    runs: [[f64; 6]; 2],
    units: f64,
    rate_per_s: f64,
}

const BEFORE: [Before; 2] = [
    Before {
        unit: "order",
        units_name: "orders",
        runs: [
            [30.28, 12.28, 18.00, 4.00, 116.4, 301.2],
            [30.83, 12.83, 18.00, 4.00, 114.6, 417.6],
        ],
        units: 20_000.0,
        rate_per_s: 1_000.0,
    },
    Before {
        unit: "delivery",
        units_name: "deliveries",
        runs: [
            [29.91, 8.81, 21.10, 2.99, 124.1, 308.8],
            [29.98, 8.89, 21.09, 3.00, 116.0, 352.4],
        ],
        units: 10_000.0,
        rate_per_s: 1_000.0,
    },
];

const BEFORE_COMMIT: &str = "8f059ad";

/// The rows of the before/after table: title, `per_unit` key in commandstats.py's JSON, and
/// decimals.
const COMMANDSTATS_ROWS: [(&str, &str, usize); 6] = [
    ("Redis commands executed", "commands_executed", 2),
    (
        "sent by clients (top-level commands)",
        "commands_sent_by_clients",
        2,
    ),
    ("called from scripts", "commands_in_scripts", 2),
    ("script calls (EVALSHA/FCALL)", "script_calls", 2),
    (
        "Redis usec, top-level commands (commandstats)",
        "usec_top_level",
        1,
    ),
    (
        "Redis process CPU usec (INFO cpu, noisy)",
        "redis_process_cpu_usec",
        1,
    ),
];

fn commandstats(out: &mut String, input: &SectionInput) {
    let runs: Vec<&Run> = input.of("commandstats").collect();
    if runs.is_empty() {
        return;
    }
    for before in &BEFORE {
        let Some(after) = runs.iter().find(|r| s(&r.v, "unit") == Some(before.unit)) else {
            let _ = writeln!(out, "No per-{} results in this run.\n", before.unit);
            continue;
        };
        let v = &after.v;
        let _ = writeln!(out, "### Per {}\n", before.unit);
        let rows: Vec<Vec<String>> = COMMANDSTATS_ROWS
            .iter()
            .enumerate()
            .map(|(i, &(title, key, digits))| {
                let a = f(v, &format!("per_unit.{key}"));
                let mean = (before.runs[0][i] + before.runs[1][i]) / 2.0;
                vec![
                    title.to_string(),
                    format!("{:.digits$}", before.runs[0][i]),
                    format!("{:.digits$}", before.runs[1][i]),
                    a.map_or_else(|| "-".into(), |a| format!("{a:.digits$}")),
                    a.filter(|_| mean > 0.0)
                        .map_or_else(|| "-".into(), |a| format!("{:.2}", a / mean)),
                ]
            })
            .collect();
        let herald = input
            .manifest
            .as_ref()
            .and_then(|m| s(m, "herald"))
            .or_else(|| s(v, "manifest.herald"))
            .unwrap_or("this run");
        table(
            out,
            &[
                &format!("per {}", before.unit),
                &format!("before (`{BEFORE_COMMIT}`), run 1"),
                &format!("before (`{BEFORE_COMMIT}`), run 2"),
                &format!("after (`{herald}`)"),
                "after / before (mean)",
            ],
            &rows,
        );
        let units = f(v, "units");
        let rate = f(v, "rate_per_s");
        let _ = writeln!(
            out,
            "After: {} {} at {}/s; before: {} at {}/s.",
            int_or_dash(units),
            before.units_name,
            int_or_dash(rate),
            int(before.units),
            int(before.rate_per_s)
        );
        if rate.is_some_and(|r| r != before.rate_per_s) {
            let _ = writeln!(
                out,
                "**Not the before run's rate**: the reads (XREADGROUP, XREAD, claims) are per \
                 batch, and a batch holds more the higher the rate, so these per-{} figures do \
                 not compare one to one.",
                before.unit
            );
        }
        out.push('\n');
        if let Some(scripts) = v["by_script"].as_object().filter(|m| !m.is_empty()) {
            let mut scripts: Vec<(&String, &Value)> = scripts
                .iter()
                .filter(|(_, sc)| f(sc, "calls").unwrap_or(0.0) >= 0.005)
                .collect();
            // Most called first.
            scripts.sort_by(|a, b| {
                f(b.1, "calls")
                    .unwrap_or(0.0)
                    .total_cmp(&f(a.1, "calls").unwrap_or(0.0))
            });
            let rows: Vec<Vec<String>> = scripts
                .into_iter()
                .map(|(name, sc)| {
                    vec![
                        name.clone(),
                        f(sc, "calls").map_or_else(|| "-".into(), |c| format!("{c:.3}")),
                        f(sc, "inner_commands_per_call")
                            .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                        f(sc, "usec_estimate").map_or_else(|| "-".into(), |u| format!("{u:.1}")),
                    ]
                })
                .collect();
            let _ = writeln!(
                out,
                "After, by script, per {} (MONITOR pass; usec estimated):\n",
                before.unit
            );
            table(
                out,
                &["script", "calls", "inner commands/call", "usec (est.)"],
                &rows,
            );
        }
    }
    let _ = writeln!(
        out,
        "Issue 11 sets no threshold here: it asks for these figures before and after. The before \
         run, its per-command tables and the method are in `loadtest/notes/commandstats.md`.\n"
    );
}

// ---- scale on Redis Cluster (issue 11) -------------------------------------------------------

/// How many Herald nodes a scale run spread its load over: `nodes` (written by the load tool),
/// else the URLs it was given.
fn nodes_of(r: &Run) -> u64 {
    f(&r.v, "nodes").map_or_else(
        || s(&r.v, "url").map_or(1, |u| u.split(',').count() as u64),
        |n| n as u64,
    )
}

fn scale(out: &mut String, input: &SectionInput) {
    let intake_runs: Vec<&Run> = input.of("intake").collect();
    let fanout_runs: Vec<&Run> = input.of("fanout").collect();
    if intake_runs.is_empty() && fanout_runs.is_empty() {
        return;
    }
    let mut by_nodes: BTreeMap<u64, Pair> = BTreeMap::new();
    for r in &intake_runs {
        by_nodes.entry(nodes_of(r)).or_default().0.get_or_insert(r);
    }
    for r in &fanout_runs {
        by_nodes.entry(nodes_of(r)).or_default().1.get_or_insert(r);
    }
    let orders = |r: Option<&Run>| r.and_then(|r| f(&r.v, "throughput_per_s"));
    let deliveries = |r: Option<&Run>| r.and_then(|r| f(&r.v, "deliveries_per_s"));
    let base = by_nodes.get(&1).copied().unwrap_or_default();
    let vs_one = |x: Option<f64>, one: Option<f64>| match (x, one) {
        (Some(x), Some(one)) if one > 0.0 => format!("{:.2}", x / one),
        _ => "-".into(),
    };
    let rows: Vec<Vec<String>> = by_nodes
        .iter()
        .map(|(&n, &(i, fo))| {
            let plots = [i.map(plot_cell), fo.map(plot_cell)]
                .into_iter()
                .flatten()
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                int(n as f64),
                int_or_dash(orders(i)),
                i.map_or_else(
                    || "-".into(),
                    |r| lat(&r.v, "accept_latency_ms", &["p50", "p99"]),
                ),
                vs_one(orders(i), orders(base.0)),
                int_or_dash(deliveries(fo)),
                fo.map_or_else(|| "-".into(), |r| lat(&r.v, "latency_ms", &["p50", "p99"])),
                int_or_dash(fo.and_then(|r| f(&r.v, "missing"))),
                vs_one(deliveries(fo), deliveries(base.1)),
                plots,
            ]
        })
        .collect();
    let describe_intake = intake_runs.first().map_or_else(String::new, |r| {
        format!(
            "intake: {} closed-loop clients in all, orders round-robin over the nodes",
            int_or_dash(f(&r.v, "clients"))
        )
    });
    let describe_fanout = fanout_runs.first().map_or_else(String::new, |r| {
        format!(
            "fan-out: {}, subscribers round-robin over the nodes",
            fanout_describe(&r.v)
        )
    });
    let what: Vec<String> = [describe_intake, describe_fanout]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    let _ = writeln!(out, "Per node count ({}):\n", what.join("; "));
    table(
        out,
        &[
            "Herald nodes",
            "orders/s",
            "accept p50 / p99 ms",
            "orders/s vs 1 node",
            "fan-out deliveries/s",
            "fan-out p50 / p99 ms",
            "fan-out missing",
            "deliveries/s vs 1 node",
            "plots",
        ],
        &rows,
    );
    let measured = |pick: fn(&Pair) -> bool| {
        let ns: Vec<String> = by_nodes
            .iter()
            .filter(|(_, p)| pick(p))
            .map(|(n, _)| n.to_string())
            .collect();
        let all = [1, 2, 3]
            .iter()
            .all(|n| by_nodes.get(n).is_some_and(|p| pick(p)));
        (
            if ns.is_empty() {
                "none".to_string()
            } else {
                format!("at {} node(s)", ns.join(", "))
            },
            all,
        )
    };
    let (o, o_all) = measured(|p| p.0.is_some());
    let (d, d_all) = measured(|p| p.1.is_some());
    let ts = [
        Target::new("orders/s with 1, 2 and 3 Herald nodes", o, Some(o_all)),
        Target::new(
            "fan-out deliveries/s with 1, 2 and 3 Herald nodes",
            d,
            Some(d_all),
        ),
    ];
    let _ = writeln!(
        out,
        "Issue 11 asks for these figures and what bounds them, with no threshold; the checks are \
         that every node count was measured.\n"
    );
    targets(out, "check (issue 11)", &ts);
}

// ---- workflow steps -------------------------------------------------------------------------

/// The workflow a `workflow.sh` run measured: the second word of its label (`<engine> plain
/// ...` or `<engine> task ...`, the script's convention).
fn workflow_kind(r: &Run) -> &str {
    s(&r.v, "label")
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
}

/// Engines in the order they are read: memory, then the others by name.
fn engine_order(engine: &str) -> (bool, String) {
    (engine != "memory", engine.to_string())
}

/// Orders of a throughput run that did not end `confirmed`: POST errors, other statuses, no
/// outcome in time.
fn not_confirmed(v: &Value) -> f64 {
    let sum = |k: &str| {
        v[k].as_object()
            .map(|e| e.values().filter_map(Value::as_f64).sum())
            .unwrap_or(0.0)
    };
    sum("errors") + sum("ended_otherwise") + f(v, "timed_out").unwrap_or(0.0)
}

fn workflow(out: &mut String, input: &SectionInput) {
    let mut throughput: Vec<&Run> = input
        .of("workflow")
        .filter(|r| s(&r.v, "mode") == Some("throughput"))
        .collect();
    let mut lateness: Vec<&Run> = input
        .of("workflow")
        .filter(|r| s(&r.v, "mode") == Some("lateness"))
        .collect();
    let mut intakes: Vec<&Run> = input.of("intake").collect();
    if throughput.is_empty() && lateness.is_empty() && intakes.is_empty() {
        return;
    }
    let kind_order = |r: &Run| -> u8 {
        match workflow_kind(r) {
            "plain" => 0,
            "task" => 1,
            _ => 2,
        }
    };
    throughput.sort_by_key(|r| (engine_order(engine(r)), kind_order(r)));
    lateness.sort_by_key(|r| engine_order(engine(r)));
    intakes.sort_by_key(|r| engine_order(engine(r)));

    // Per engine: plain intake, then the workflow without steps, then with the step.
    let mut rows: Vec<((bool, String), u8, Vec<String>)> = Vec::new();
    for r in &intakes {
        let v = &r.v;
        rows.push((
            engine_order(engine(r)),
            0,
            vec![
                format!(
                    "{}, plain intake: {} clients, each sending its next order on the 202",
                    engine(r),
                    int_or_dash(f(v, "clients"))
                ),
                String::new(),
                int_or_dash(f(v, "throughput_per_s")),
                lat(v, "accept_latency_ms", &["p50", "p99"]),
                String::new(),
                int(v["errors"]
                    .as_object()
                    .map(|e| e.values().filter_map(Value::as_f64).sum())
                    .unwrap_or(0.0)),
                String::new(),
                plot_cell(r),
            ],
        ));
    }
    for r in &throughput {
        let v = &r.v;
        let what = match workflow_kind(r) {
            "plain" => "no steps",
            "task" => "one task step at `accepted`",
            other => other,
        };
        let confirmed_in_window =
            f(v, "confirmed_per_s").unwrap_or(0.0) * f(v, "duration_s").unwrap_or(0.0);
        let calls = f(v, "task_service.calls_in_window")
            .filter(|_| confirmed_in_window > 0.0)
            .map_or_else(String::new, |c| format!("{:.2}", c / confirmed_in_window));
        rows.push((
            engine_order(engine(r)),
            1 + kind_order(r),
            vec![
                format!(
                    "{}, {what}: {} orders in the workflow at once",
                    engine(r),
                    int_or_dash(f(v, "clients"))
                ),
                int_or_dash(f(v, "confirmed_per_s")),
                int_or_dash(f(v, "accepted_per_s")),
                lat(v, "accept_latency_ms", &["p50", "p99"]),
                lat(v, "confirm_latency_ms", &["p50", "p99", "p999"]),
                int(not_confirmed(v)),
                calls,
                plot_cell(r),
            ],
        ));
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, _, row)| row).collect();
    if !rows.is_empty() {
        table(
            out,
            &[
                "run",
                "confirmed/s",
                "accepted/s",
                "accept p50 / p99 ms",
                "send -> confirmed p50 / p99 / p99.9 ms",
                "not confirmed",
                "task calls per confirmed order",
                "plot",
            ],
            &rows,
        );
    }

    // The same-run comparison, per engine.
    let mut engines: Vec<&str> = throughput.iter().map(|r| engine(r)).collect();
    engines.sort_by_key(|e| engine_order(e));
    engines.dedup();
    let confirmed = |eng: &str, kind: &str| {
        throughput
            .iter()
            .find(|r| engine(r) == eng && workflow_kind(r) == kind)
            .and_then(|r| f(&r.v, "confirmed_per_s"))
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => percent(a / b),
        _ => "-".into(),
    };
    let rows: Vec<Vec<String>> = engines
        .iter()
        .map(|&eng| {
            let (plain, task) = (confirmed(eng, "plain"), confirmed(eng, "task"));
            let intake = intakes
                .iter()
                .find(|r| engine(r) == eng)
                .and_then(|r| f(&r.v, "throughput_per_s"));
            vec![
                eng.to_string(),
                int_or_dash(task),
                int_or_dash(plain),
                ratio(task, plain),
                int_or_dash(intake),
                ratio(task, intake),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "Same run, same build, same engine: orders confirmed per second with one task step \
             beside the workflow without steps, and beside plain intake (202s per second):\n"
        );
        table(
            out,
            &[
                "engine",
                "with a task step, confirmed/s",
                "without steps, confirmed/s",
                "task ÷ without steps",
                "plain intake, accepted/s",
                "task ÷ plain intake",
            ],
            &rows,
        );
    }

    let rows: Vec<Vec<String>> = lateness
        .iter()
        .map(|r| {
            let v = &r.v;
            let herald = &v["herald_timer_lateness"];
            let herald_cell = if herald.is_null() || f(herald, "count") == Some(0.0) {
                "-".to_string()
            } else {
                format!(
                    "{} / {} (p99 bucket <= {}; {} timers)",
                    ms(f(herald, "p50_ms")),
                    ms(f(herald, "p99_ms")),
                    ms(f(herald, "p99_bucket_ms")),
                    int_or_dash(f(herald, "count"))
                )
            };
            let ready = match f(v, "timers_ready_before_due_ms") {
                Some(ms) => format!("{} ms before", int(ms)),
                None => "**not** before the due time".into(),
            };
            let early = f(v, "event_early").unwrap_or(0.0) + f(v, "seen_early").unwrap_or(0.0);
            vec![
                engine(r).to_string(),
                int_or_dash(f(v, "accepted")),
                ready,
                lat(v, "event_lateness_ms", &["p50", "p99", "max"]),
                lat(v, "seen_lateness_ms", &["p50", "p99", "max"]),
                herald_cell,
                format!("{} / {}", int_or_dash(f(v, "missing")), int(early)),
                plot_cell(r),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "Timer lateness: orders created beforehand, every one due at the same instant (a \
             `wait` step `until = \"order.metadata.dueAt\"`, next `confirmed`):\n"
        );
        table(
            out,
            &[
                "engine",
                "timers due at once",
                "all scheduled",
                "occurredAt - dueAt p50 / p99 / max ms",
                "seen on the feed - dueAt p50 / p99 / max ms",
                "Herald's histogram (due -> queued) p50 / p99 ms",
                "missing / early",
                "plot",
            ],
            &rows,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(stem: &str, v: Value) -> Run {
        Run {
            stem: stem.into(),
            v,
            plot: Some(format!("docs/benchmarks/x-{stem}.svg")),
        }
    }

    fn input(section: Section, runs: Vec<Run>) -> SectionInput {
        SectionInput {
            section,
            manifest: Some(json!({
                "command": format!("DURATION=10s {}", section.script()),
                "redis": "7.0.15",
                "herald": "abc1234",
            })),
            runs,
            method: Some("How it is measured.".into()),
            notes: Some("What bounds it.".into()),
        }
    }

    fn lat(p50: f64, p99: f64) -> Value {
        json!({"count": 1000, "mean": p50, "p50": p50, "p90": p50, "p99": p99, "p999": p99 * 2.0, "max": p99 * 3.0})
    }

    fn machine() -> Value {
        json!({"cores": 2, "hostname": "h", "os": "linux", "arch": "x86_64",
               "cpu_model": "AMD EPYC 7B13", "memory_kib": 24_000_000u64, "kernel": "6.18.0",
               "nofile": {"soft": 20000, "hard": 20000}})
    }

    fn intake_run(engine: &str, clients: u64, tput: f64, p99: f64) -> Run {
        run(
            &format!("{engine}-c{clients}"),
            json!({"scenario": "intake", "label": format!("{engine} clients={clients}"),
                   "mode": "closed", "clients": clients, "throughput_per_s": tput,
                   "accept_latency_ms": lat(0.5, p99), "confirm_latency_ms": null,
                   "errors": {"http_503": 2}, "machine": machine()}),
        )
    }

    #[test]
    fn numbers_are_formatted_for_reading() {
        assert_eq!(int(1234567.4), "1,234,567");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(-1500.0), "-1,500");
        assert_eq!(ms(Some(0.071)), "0.07");
        assert_eq!(ms(Some(12.34)), "12.3");
        assert_eq!(ms(Some(1945.2)), "1,945");
        assert_eq!(ms(None), "-");
        assert_eq!(percent(0.795), "80 %");
    }

    #[test]
    fn intake_section_computes_ratios_and_verdicts() {
        let runs = vec![
            intake_run("memory", 16, 47_862.0, 1.21),
            intake_run("redis", 16, 21_000.0, 12.5),
            intake_run("redis", 1, 4_427.0, 0.61),
            run(
                "xadd-c16",
                json!({"scenario": "redis-benchmark", "clients": 16, "pipeline": 1,
                       "requests_per_s": 84_000.0, "p50_ms": 0.079}),
            ),
        ];
        let doc = render(
            Some("Intro."),
            &[input(Section::Intake, runs)],
            "target/bench",
        );
        assert!(doc.starts_with("# Benchmarks\n\nIntro.\n"));
        assert!(doc.contains("```sh\nDURATION=10s loadtest/scenarios/intake.sh\n```"));
        assert!(doc.contains(
            "Machine: 2 cores (AMD EPYC 7B13), 23 GiB, linux 6.18.0, Redis 7.0.15. Herald at \
             `abc1234`. Load generator open-file limit: soft 20,000 / hard 20,000."
        ));
        // Rows sorted by engine then clients; the Redis row at 16 clients is 25 % of XADD.
        let memory = doc
            .find("| memory, 16 clients | 47,862 |")
            .expect("memory row");
        let redis1 = doc
            .find("| redis, 1 client | 4,427 |")
            .expect("redis 1 row");
        assert!(memory < redis1);
        assert!(doc.contains(
            "| redis, 16 clients | 21,000 | 0.50 / 12.5 / 25.0 |  | 2 | 25 % | \
             [plot](docs/benchmarks/x-redis-c16.svg) |"
        ));
        assert!(doc.contains("| 16 clients | 84,000 | 0.08 |"));
        assert!(
            doc.contains("| Redis engine >= 20,000 accepted/s at 16 clients | 21,000/s | met |")
        );
        assert!(doc.contains("| Redis engine p99 < 10 ms at 16 clients | 12.5 ms | **NOT met** |"));
        assert!(doc.contains(
            "| memory engine >= 50,000 accepted/s | 47,862/s (best run: 16 clients) | **NOT met** |"
        ));
        assert!(doc.contains("How it is measured.\n"));
        assert!(doc.contains("What bounds it.\n"));
        // One policy: no fsync table, rows named as before.
        assert!(!doc.contains("appendfsync"));
    }

    #[test]
    fn intake_section_compares_the_fsync_policies_of_the_same_run() {
        let policy = |mut r: Run, p: &str| {
            r.stem = format!("redis-{p}-c16");
            r.v["redis_appendfsync"] = json!(p);
            r
        };
        let xadd = |p: &str, rps: f64| {
            run(
                &format!("xadd-{p}-c16-p1"),
                json!({"scenario": "redis-benchmark", "clients": 16, "pipeline": 1,
                       "redis_appendfsync": p, "requests_per_s": rps, "p50_ms": 0.1}),
            )
        };
        let runs = vec![
            policy(intake_run("redis", 16, 8_400.0, 4.0), "always"),
            policy(intake_run("redis", 16, 21_000.0, 1.5), "everysec"),
            intake_run("memory", 16, 47_862.0, 1.21),
            xadd("always", 10_500.0),
            xadd("everysec", 84_000.0),
        ];
        let doc = render(None, &[input(Section::Intake, runs)], "target/bench");
        // Each Redis run is named with its policy, everysec first, and read against the
        // ceiling of its own policy.
        let everysec = doc
            .find("| redis (everysec), 16 clients | 21,000 | 0.50 / 1.50 / 3.00 |  | 2 | 25 % |")
            .expect("everysec row");
        let always = doc
            .find("| redis (always), 16 clients | 8,400 | 0.50 / 4.00 / 8.00 |  | 2 | 80 % |")
            .expect("always row");
        assert!(everysec < always);
        assert!(doc.contains("| 16 clients, appendfsync always | 10,500 | 0.10 |"));
        assert!(doc.contains(
            "| appendfsync | accepted/s at 16 clients | accept p99 ms | accepted/s, ratio to everysec |"
        ));
        assert!(doc.contains("| `everysec` | 21,000 | 1.50 |  |"));
        assert!(doc.contains("| `always` | 8,400 | 4.00 | 0.40 |"));
        // The targets stay judged on everysec.
        assert!(
            doc.contains("| Redis engine >= 20,000 accepted/s at 16 clients | 21,000/s | met |")
        );
        assert!(doc.contains("| Redis engine p99 < 10 ms at 16 clients | 1.50 ms | met |"));
    }

    fn fanout_run(
        server: &str,
        name: &str,
        mode: &str,
        conns: u64,
        rate: Value,
        d: f64,
        p99: f64,
    ) -> Run {
        run(
            &format!("{server}-{name}"),
            json!({"scenario": "fanout", "target": server, "mode": mode, "connections": conns,
                   "rate": rate, "deliveries_per_s": d, "latency_ms": lat(1.0, p99),
                   "missing": 0, "stalled": 0, "machine": machine(),
                   "processes": [{"role": "publisher", "pid": 1, "connections": 0,
                                  "nofile": {"soft": 20000, "hard": 20000}},
                                 {"role": "subscribers", "pid": 2, "connections": conns,
                                  "nofile": {"soft": 20000, "hard": null}}]}),
        )
    }

    #[test]
    fn fanout_section_pairs_servers_and_judges_every_target() {
        let mut stalled_h = fanout_run(
            "herald",
            "stalled5-c1000-r300",
            "broadcast",
            1000,
            json!(300.0),
            300_000.0,
            120.0,
        );
        stalled_h.v["stalled"] = json!(50);
        stalled_h.v["stalled_after_run"] = json!({"close 4008": 50});
        let runs = vec![
            fanout_run(
                "herald",
                "broadcast-c1000-rmax",
                "broadcast",
                1000,
                json!("max"),
                900_000.0,
                200.0,
            ),
            fanout_run(
                "reference",
                "broadcast-c1000-rmax",
                "broadcast",
                1000,
                json!("max"),
                1_200_000.0,
                150.0,
            ),
            fanout_run(
                "herald",
                "broadcast-c1000-r100",
                "broadcast",
                1000,
                json!(100.0),
                100_000.0,
                50.0,
            ),
            fanout_run(
                "herald",
                "targeted-c10000-r10000",
                "targeted",
                10000,
                json!(10000.0),
                10_000.0,
                5.5,
            ),
            fanout_run(
                "herald",
                "stalled0-c1000-r300",
                "broadcast",
                1000,
                json!(300.0),
                300_000.0,
                100.0,
            ),
            stalled_h,
            run(
                "herald-idle",
                json!({"scenario": "idle", "label": "herald", "connected": 10000,
                "server_rss_before_kib": 20000, "server_rss_after_kib": 88000,
                "server_kib_per_connection": 6.8}),
            ),
        ];
        let doc = render(None, &[input(Section::Fanout, runs)], "target/bench");
        // The 100 ev/s row (by rate) before the max row; Herald and the reference side by side.
        let r100 = doc
            .find("| broadcast, 1,000 conns, 100 ev/s | 100,000 | - | - |")
            .expect("r100");
        let rmax = doc
            .find("| broadcast, 1,000 conns, max | 900,000 | 1,200,000 | 75 % | 1.00 / 200 / 400 | 1.00 / 150 / 300 | 0 | 0 |")
            .expect("max row");
        assert!(r100 < rmax);
        assert!(doc.contains("| herald | 100 ms | 120 ms | +20 % | close 4008: 50 |"));
        assert!(doc.contains("| herald | 10,000 | 20,000 -> 88,000 KiB | 6.80 KiB |"));
        assert!(
            doc.contains("subscribers (10,000 connections, nofile soft 20,000 / hard unlimited)")
        );
        assert!(doc.contains(
            "| max-rate broadcast >= 50 % of the reference (1,000 connections) | 75 % | met |"
        ));
        assert!(doc.contains(
            "| targeted (10,000 connections, 10,000 events/s) p99 <= 5 ms | 5.50 ms | **NOT met** |"
        ));
        assert!(doc.contains(
            "| 5 % stalled clients raise the others' p99 by under 10 % | +20 % | **NOT met** |"
        ));
        assert!(doc.contains("| <= 8 KiB RSS per idle connection at 10,000 | 6.80 KiB | met |"));
    }

    #[test]
    fn webhooks_section_reads_against_the_sink_ceiling() {
        let wh = |stem: &str, v: Value| {
            let mut base = json!({"scenario": "webhooks", "target": "herald", "mode": "throughput",
                "rate": "max", "max_in_flight": 256, "fail_percent": 0.0, "stall_percent": 0.0,
                "deliveries_per_s": 3859.0, "latency_ms": lat(503.0, 682.0),
                "invalid_signatures": 0, "missing": 0, "received_distinct": 50_000,
                "retries": {"failed_first": 0}});
            for (k, x) in v.as_object().expect("object") {
                base[k] = x.clone();
            }
            run(stem, base)
        };
        let runs = vec![
            wh("herald-rmax-inflight256", json!({})),
            wh(
                "herald-r1000-inflight256",
                json!({"rate": 1000.0, "deliveries_per_s": 1000.0}),
            ),
            wh(
                "reference",
                json!({"target": "reference", "connections": 64, "deliveries_per_s": 32_552.0, "max_in_flight": null}),
            ),
            wh(
                "herald-lateness-inflight0",
                json!({"mode": "lateness", "deliveries_per_s": null,
                "max_in_flight": null, "lateness_ms": lat(1.37, 3.94),
                "retries": {"failed_first": 10000, "received": 10000, "missing": 0, "early": 0}}),
            ),
        ];
        let doc = render(None, &[input(Section::Webhooks, runs)], "target/bench");
        assert!(
            doc.contains("| sink ceiling (load tool -> sink, 64 connections) | 32,552 | 100 % |")
        );
        let max = doc
            .find(
                "| Herald, max rate, maxInFlight 256 | 3,859 | 12 % | 503 / 682 / 1,364 | 0 | 0 |",
            )
            .expect("max row");
        assert!(
            doc.find("| sink ceiling").expect("ceiling row") < max,
            "the ceiling first"
        );
        // A fixed-rate run is not a share of the ceiling.
        assert!(doc.contains("| Herald, 1,000 events/s, maxInFlight 256 | 1,000 |  | 503"));
        assert!(doc.contains(
            "| maxInFlight default | 10,000 | 10,000 | 0 | 1.37 / 3.94 / 7.88 / 11.8 | 0 |"
        ));
        assert!(doc.contains(
            "| >= 10,000 signed deliveries/s to a local keep-alive sink, ~1 KB bodies | 3,859/s (best run); the sink's ceiling here: 32,552/s | **NOT met** |"
        ));
        assert!(doc.contains(
            "| retry lateness p99 <= 50 ms with 10,000 retries scheduled | 3.94 ms, 10,000 retries, 0 missing | met |"
        ));
        assert!(doc.contains(
            "| every delivery verifies | 0 invalid signatures in 200,000 deliveries | met |"
        ));
    }

    #[test]
    fn e2e_section_renders_the_agreed_json() {
        let fixture = json!({
            "scenario": "e2e", "label": "redis 500/s", "rate": 500.0, "duration_s": 10.0,
            "subscribers": 100, "endpoints": 2, "protocol": "graphql-transport-ws",
            "orders": {"sent": 5000, "accepted": 4998, "errors": {"http_503": 2}},
            "accept": lat(0.4, 2.0),
            "websocket": {"expected": 9996, "received": 9996, "missing": 0, "duplicates": 0,
                          "confirmed": lat(3.0, 9.0), "accepted": lat(1.5, 6.0)},
            "webhook": {"expected": 19992, "received": 19990, "missing": 2, "duplicates": 1,
                        "bad_signatures": 0, "confirmed": null, "accepted": lat(5.0, 20.0)},
            "machine": machine(),
        });
        let mut no_endpoints = fixture.clone();
        no_endpoints["label"] = json!("no endpoints");
        no_endpoints["endpoints"] = json!(0);
        let doc = render(
            None,
            &[input(
                Section::E2e,
                vec![run("redis-r500", fixture), run("zz", no_endpoints)],
            )],
            "target/bench",
        );
        assert!(doc.contains("| no endpoints | WebSocket |"));
        assert!(!doc.contains("| no endpoints | webhook |"));
        assert!(doc.contains("## End to end"));
        assert!(doc.contains(
            "| redis 500/s | 500/s for 10 s | graphql-transport-ws | 100 / 2 | 5,000 / 4,998 | 2 | 0.40 / 2.00 / 4.00 |"
        ));
        assert!(doc.contains("| redis 500/s | WebSocket | 9,996 | 9,996 | 0 | 0 | - | 1.50 / 6.00 / 12.0 | 3.00 / 9.00 / 18.0 |"));
        assert!(doc.contains("| redis 500/s | webhook | 19,992 | 19,990 | 2 | 1 | 0 | 5.00 / 20.0 / 40.0 | no samples |"));
        assert!(doc.contains(
            "| every accepted order's events reach every subscriber and endpoint | 2 missing | **NOT met** |"
        ));
        assert!(doc.contains("| every webhook delivery verifies | 0 bad signatures | met |"));
    }

    #[test]
    fn intake_section_judges_issue_11_against_the_same_runs_references() {
        let reference = |clients: u64, tput: f64| {
            let mut r = intake_run("reference", clients, tput, 0.9);
            r.stem = format!("reference-c{clients}");
            r
        };
        let runs = vec![
            intake_run("memory", 64, 52_000.0, 3.0),
            intake_run("redis", 16, 21_000.0, 4.0),
            reference(64, 80_000.0),
            run(
                "xadd-everysec-c16-p1",
                json!({"scenario": "redis-benchmark", "clients": 16, "pipeline": 1,
                       "redis_appendfsync": "everysec", "requests_per_s": 84_000.0, "p50_ms": 0.1}),
            ),
        ];
        let doc = render(None, &[input(Section::Intake, runs)], "target/bench");
        assert!(doc.contains(
            "| reference (minimal hyper server, 202 only), 64 clients | 80,000 | 0.50 / 0.90 / 1.80 |  | 2 |  |"
        ));
        assert!(doc.contains("| 64 | 52,000 | 80,000 | 65 % | 3.00 | 0.90 |"));
        assert!(doc.contains(
            "| Redis engine >= 30 % of the same run's redis-benchmark XADD rate at 16 clients | \
             25 % (21,000/s of 84,000/s) | **NOT met** |"
        ));
        assert!(doc.contains(
            "| memory engine >= 50,000 accepted/s at 64 clients, beside a minimal hyper server \
             answering 202 to the same POST | 52,000/s, 65 % of the hyper server's 80,000/s | met |"
        ));
        // The reference is no engine: the best memory run stays Herald's.
        assert!(doc.contains(
            "| memory engine >= 50,000 accepted/s | 52,000/s (best run: 64 clients) | met |"
        ));
    }

    #[test]
    fn intake_section_without_the_references_says_what_is_missing() {
        let runs = vec![intake_run("memory", 16, 47_862.0, 1.21)];
        let doc = render(None, &[input(Section::Intake, runs)], "target/bench");
        assert!(doc.contains(
            "| Redis engine >= 30 % of the same run's redis-benchmark XADD rate at 16 clients | \
             no 16-client Redis run | not measured |"
        ));
        assert!(
            doc.contains(
                "answering 202 to the same POST | no 64-client memory run | not measured |"
            )
        );
        assert!(!doc.contains("hyper 202 server accepted/s"));
    }

    #[test]
    fn webhooks_section_judges_the_share_of_the_sink_ceiling() {
        let herald = json!({"scenario": "webhooks", "target": "herald", "mode": "throughput",
            "rate": "max", "max_in_flight": 256, "deliveries_per_s": 9_000.0,
            "body_bytes_mean": 1031.0, "latency_ms": lat(5.0, 9.0), "invalid_signatures": 0,
            "missing": 0, "received_distinct": 90_000});
        let mut fixed = herald.clone();
        fixed["rate"] = json!(20_000.0);
        fixed["deliveries_per_s"] = json!(12_000.0);
        let mut reference = herald.clone();
        reference["target"] = json!("reference");
        reference["connections"] = json!(64);
        reference["deliveries_per_s"] = json!(30_000.0);
        let runs = vec![
            run("herald-rmax-inflight256", herald),
            run("herald-r20000-inflight256", fixed),
            run("reference", reference),
        ];
        let doc = render(None, &[input(Section::Webhooks, runs)], "target/bench");
        // Only a max-rate run reads as a share of the ceiling.
        assert!(doc.contains(
            "| >= 25 % of the sink's same-run ceiling (max rate, one endpoint, ~1 KB bodies) | \
             30 % (9,000/s of 30,000/s, bodies 1,031 bytes) | met |"
        ));
    }

    fn commandstats_fixture(unit: &str, executed: f64, rate: f64) -> Value {
        json!({
            "scenario": "commandstats", "label": "2026-12-07T17:00Z", "unit": unit,
            "units": 20000, "units_monitor_pass": 20000, "rate_per_s": rate,
            "manifest": {"command": "loadtest/scenarios/commandstats.sh", "herald": "def5678"},
            "per_unit": {"commands_executed": executed, "commands_sent_by_clients": 4.5,
                         "commands_in_scripts": executed - 4.5, "script_calls": 1.5,
                         "usec_top_level": 40.25, "usec_naive_sum": 52.0,
                         "redis_process_cpu_usec": 150.0,
                         "commands_executed_monitor_pass": executed},
            "by_script": {
                "accept": {"calls": 1.0, "inner_commands_per_call": 4.0,
                           "inner": {"xadd": 2.0, "hset": 2.0}, "usec_estimate": 18.25},
                "webhook_create": {"calls": 2.0, "inner_commands_per_call": 1.0,
                                   "inner": {"xack": 1.0}, "usec_estimate": 20.0},
                "rarely": {"calls": 0.001, "inner_commands_per_call": 1.0,
                           "inner": {"hget": 1.0}, "usec_estimate": 0.01}
            },
            "excluded_load_generator": {},
            "idle": {"seconds": 10, "commands_per_s": 14.3, "commands": {}}
        })
    }

    #[test]
    fn commandstats_section_puts_the_before_figures_beside_the_after_run() {
        let runs = vec![
            run("intake", commandstats_fixture("order", 10.5, 1000.0)),
            run("webhooks", commandstats_fixture("delivery", 12.0, 2000.0)),
        ];
        let mut section = input(Section::Commandstats, runs);
        section.manifest = Some(json!({"command": "loadtest/scenarios/commandstats.sh",
                                       "redis": "7.0.15", "herald": "def5678"}));
        let doc = render(None, &[section], "target/bench");
        assert!(doc.contains("## Redis commands and Redis CPU per order and per delivery"));
        assert!(doc.contains("### Per order"));
        assert!(doc.contains(
            "| per order | before (`8f059ad`), run 1 | before (`8f059ad`), run 2 | after (`def5678`) | after / before (mean) |"
        ));
        // 10.5 after against a before mean of (30.28 + 30.83) / 2 = 30.555.
        assert!(doc.contains("| Redis commands executed | 30.28 | 30.83 | 10.50 | 0.34 |"));
        assert!(doc.contains("| script calls (EVALSHA/FCALL) | 4.00 | 4.00 | 1.50 | 0.38 |"));
        assert!(doc.contains(
            "| Redis usec, top-level commands (commandstats) | 116.4 | 114.6 | 40.2 | 0.35 |"
        ));
        assert!(doc.contains("| Redis commands executed | 29.91 | 29.98 | 12.00 | 0.40 |"));
        assert!(doc.contains("After: 20,000 orders at 1,000/s; before: 20,000 at 1,000/s."));
        // The delivery run went at another rate than the before run: said so.
        assert!(doc.contains("**Not the before run's rate**"));
        assert_eq!(doc.matches("**Not the before run's rate**").count(), 1);
        // Scripts most called first; those called almost never left out.
        let accept = doc
            .find("| accept | 1.000 | 4.00 | 18.2 |")
            .expect("accept row");
        let create = doc
            .find("| webhook_create | 2.000 | 1.00 | 20.0 |")
            .expect("webhook_create row");
        assert!(create < accept);
        assert!(!doc.contains("| rarely |"));
        assert!(doc.contains("After: 20,000 deliveries at 2,000/s; before: 10,000 at 1,000/s."));
    }

    #[test]
    fn commandstats_section_with_one_unit_says_the_other_is_missing() {
        let runs = vec![run("intake", commandstats_fixture("order", 10.5, 1000.0))];
        let doc = render(None, &[input(Section::Commandstats, runs)], "target/bench");
        assert!(doc.contains("### Per order"));
        assert!(doc.contains("No per-delivery results in this run."));
        assert!(doc.contains("after (`abc1234`)"));
    }

    fn scale_runs(nodes: &[u64]) -> Vec<Run> {
        let mut runs = Vec::new();
        for &n in nodes {
            runs.push(run(
                &format!("intake-n{n}"),
                json!({"scenario": "intake", "label": format!("cluster nodes={n}"),
                       "mode": "closed", "clients": 16, "nodes": n,
                       "throughput_per_s": 4_000.0 * n as f64,
                       "accept_latency_ms": lat(2.0, 8.0), "machine": machine()}),
            ));
            runs.push(run(
                &format!("fanout-n{n}"),
                json!({"scenario": "fanout", "target": "herald", "mode": "broadcast",
                       "connections": 300, "rate": 100.0, "nodes": n,
                       "url": (0..n).map(|i| format!("ws://127.0.0.1:{i}/graphql")).collect::<Vec<_>>().join(","),
                       "deliveries_per_s": 30_000.0, "latency_ms": lat(3.0, 12.0),
                       "missing": 0}),
            ));
        }
        runs
    }

    #[test]
    fn scale_section_has_a_row_per_node_count_read_against_one_node() {
        let doc = render(
            None,
            &[input(Section::Scale, scale_runs(&[1, 2, 3]))],
            "target/bench",
        );
        assert!(doc.contains("## Scale on Redis Cluster"));
        assert!(doc.contains(
            "Per node count (intake: 16 closed-loop clients in all, orders round-robin over the \
             nodes; fan-out: broadcast, 300 conns, 100 ev/s, subscribers round-robin over the nodes):"
        ));
        assert!(doc.contains(
            "| 1 | 4,000 | 2.00 / 8.00 | 1.00 | 30,000 | 3.00 / 12.0 | 0 | 1.00 | \
             [plot](docs/benchmarks/x-intake-n1.svg) [plot](docs/benchmarks/x-fanout-n1.svg) |"
        ));
        assert!(doc.contains("| 3 | 12,000 | 2.00 / 8.00 | 3.00 | 30,000 |"));
        assert!(
            doc.contains("| orders/s with 1, 2 and 3 Herald nodes | at 1, 2, 3 node(s) | met |")
        );
        assert!(doc.contains("What bounds it."));
    }

    #[test]
    fn scale_section_marks_a_missing_node_count() {
        let mut runs = scale_runs(&[1, 3]);
        runs.retain(|r| r.stem != "fanout-n3");
        let doc = render(None, &[input(Section::Scale, runs)], "target/bench");
        assert!(!doc.contains("| 2 |"));
        assert!(
            doc.contains(
                "| orders/s with 1, 2 and 3 Herald nodes | at 1, 3 node(s) | **NOT met** |"
            )
        );
        assert!(doc.contains(
            "| fan-out deliveries/s with 1, 2 and 3 Herald nodes | at 1 node(s) | **NOT met** |"
        ));
        assert!(doc.contains("| 3 | 12,000 | 2.00 / 8.00 | 3.00 | - | - | - | - |"));
    }

    fn workflow_run(engine: &str, kind: &str, confirmed: f64, calls: Option<u64>) -> Run {
        run(
            &format!("{engine}-{kind}"),
            json!({"scenario": "workflow", "mode": "throughput",
                   "label": format!("{engine} {kind} clients=256"), "clients": 256,
                   "duration_s": 10.0, "confirmed_per_s": confirmed, "accepted_per_s": confirmed,
                   "accept_latency_ms": lat(1.0, 4.0), "confirm_latency_ms": lat(5.0, 20.0),
                   "errors": {}, "ended_otherwise": {"rejected": 2}, "timed_out": 1,
                   "task_service": calls.map(|c| json!({"calls": c, "calls_in_window": c})),
                   "machine": machine()}),
        )
    }

    #[test]
    fn workflow_section_reads_the_task_step_against_the_same_runs_plain_figures() {
        let mut runs = vec![
            workflow_run("redis", "task", 2_000.0, Some(20_000)),
            workflow_run("memory", "task", 5_000.0, Some(50_000)),
            workflow_run("memory", "plain", 10_000.0, None),
            workflow_run("redis", "plain", 4_000.0, None),
            intake_run("memory", 64, 25_000.0, 3.0),
            run(
                "memory-lateness",
                json!({"scenario": "workflow", "mode": "lateness", "label": "memory wait",
                       "accepted": 10000, "missing": 0, "event_early": 0, "seen_early": 0,
                       "timers_ready_before_due_ms": 3500.0,
                       "event_lateness_ms": lat(30.0, 80.0), "seen_lateness_ms": lat(40.0, 95.0),
                       "herald_timer_lateness": {"count": 10000, "p50_ms": 3.0, "p99_ms": 9.5,
                                                 "p99_bucket_ms": 10.0},
                       "machine": machine()}),
            ),
            run(
                "redis-lateness",
                json!({"scenario": "workflow", "mode": "lateness", "label": "redis wait",
                       "accepted": 10000, "missing": 3, "event_early": 0, "seen_early": 0,
                       "timers_ready_before_due_ms": null,
                       "event_lateness_ms": lat(300.0, 800.0), "seen_lateness_ms": null,
                       "herald_timer_lateness": null, "machine": machine()}),
            ),
        ];
        runs[4].v["label"] = json!("memory plain intake clients=64");
        let doc = render(None, &[input(Section::Workflow, runs)], "target/bench");
        assert!(doc.contains("## Workflow steps"));
        // Memory first, plain intake, then without steps, then with the step; 10 s windows make
        // 50,000 calls one per order.
        let intake = doc.find("| memory, plain intake: 64").expect("intake row");
        let plain = doc
            .find("| memory, no steps: 256")
            .expect("memory plain row");
        let task = doc
            .find("| memory, one task step at `accepted`: 256")
            .expect("task row");
        let redis = doc.find("| redis, no steps: 256").expect("redis plain row");
        assert!(intake < plain && plain < task && task < redis);
        assert!(doc.contains(
            "| memory, one task step at `accepted`: 256 orders in the workflow at once | 5,000 | 5,000 | 1.00 / 4.00 | 5.00 / 20.0 / 40.0 | 3 | 1.00 |"
        ));
        assert!(doc.contains("| memory | 5,000 | 10,000 | 50 % | 25,000 | 20 % |"));
        assert!(doc.contains("| redis | 2,000 | 4,000 | 50 % | - | - |"));
        assert!(doc.contains(
            "| memory | 10,000 | 3,500 ms before | 30.0 / 80.0 / 240 | 40.0 / 95.0 / 285 | 3.00 / 9.50 (p99 bucket <= 10.0; 10,000 timers) | 0 / 0 |"
        ));
        assert!(doc.contains(
            "| redis | 10,000 | **not** before the due time | 300 / 800 / 2,400 | no samples | - | 3 / 0 |"
        ));
    }

    #[test]
    fn a_section_without_results_says_how_to_get_them() {
        let empty = SectionInput {
            section: Section::E2e,
            manifest: None,
            runs: Vec::new(),
            method: None,
            notes: None,
        };
        let doc = render(None, &[empty], "target/bench");
        assert!(doc.contains("```sh\nloadtest/scenarios/e2e.sh\n```"));
        assert!(
            doc.contains("No results in `target/bench/e2e/`: run `loadtest/scenarios/e2e.sh`.")
        );
        assert!(doc.contains("Machine: not recorded."));
    }

    #[test]
    fn loading_copies_plots_and_links_them_relative_to_the_output() {
        let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
        let results = dir.join("bench");
        std::fs::create_dir_all(results.join("fanout")).expect("mkdir");
        std::fs::write(
            results.join("fanout/herald-x.json"),
            r#"{"scenario":"fanout","target":"herald"}"#,
        )
        .expect("write");
        std::fs::write(results.join("fanout/herald-x.svg"), "<svg></svg>").expect("write");
        std::fs::write(results.join("fanout/manifest.json"), r#"{"command":"c"}"#).expect("write");
        std::fs::write(results.join("fanout/other.json"), r#"{"not":"a result"}"#).expect("write");
        let args = ReportArgs {
            results: results.clone(),
            out: dir.join("BENCHMARKS.md"),
            notes: dir.join("notes"),
            plots: dir.join("docs/benchmarks"),
            only: Vec::new(),
        };
        // A plot of an earlier report whose run is gone is removed; other sections' stay.
        std::fs::create_dir_all(dir.join("docs/benchmarks")).expect("mkdir");
        std::fs::write(dir.join("docs/benchmarks/fanout-old.svg"), "<svg/>").expect("write");
        std::fs::write(dir.join("docs/benchmarks/intake-x.svg"), "<svg/>").expect("write");
        let input = load_section(&args, Section::Fanout).expect("load");
        assert!(!dir.join("docs/benchmarks/fanout-old.svg").exists());
        assert!(dir.join("docs/benchmarks/intake-x.svg").exists());
        assert_eq!(input.runs.len(), 1);
        assert_eq!(
            input.runs[0].plot.as_deref(),
            Some("docs/benchmarks/fanout-herald-x.svg")
        );
        assert!(dir.join("docs/benchmarks/fanout-herald-x.svg").is_file());
        assert_eq!(
            input.manifest.as_ref().and_then(|m| s(m, "command")),
            Some("c")
        );
        assert!(input.notes.is_none());
        // Plots already in the output's folder are linked in place, not copied.
        let in_place = ReportArgs {
            out: results.join("fanout/summary.md"),
            plots: results.join("fanout"),
            ..args
        };
        let input = load_section(&in_place, Section::Fanout).expect("load");
        assert_eq!(input.runs[0].plot.as_deref(), Some("herald-x.svg"));
        let svgs = std::fs::read_dir(results.join("fanout"))
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "svg"))
            })
            .count();
        assert_eq!(svgs, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
