//! Terminal feedback on stderr: indicatif bars for files and pages (only when stderr is a
//! terminal), and log lines that go above the bars (or plainly to stderr otherwise).

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    multi: MultiProgress,
    /// Bars are drawn (stderr is a terminal and not `--quiet`).
    bars: bool,
    quiet: bool,
    /// Bars currently shown (lines go through `MultiProgress::println` only while there are some).
    active: Cell<usize>,
}

impl Ui {
    pub fn new(quiet: bool) -> Self {
        let bars = !quiet && std::io::stderr().is_terminal();
        let target = if bars { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Self { multi: MultiProgress::with_draw_target(target), bars, quiet, active: Cell::new(0) }
    }

    /// An informational line (suppressed by `--quiet`).
    pub fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            self.print(msg.as_ref());
        }
    }

    /// A warning or error line (always shown).
    pub fn alert(&self, msg: impl AsRef<str>) {
        self.print(msg.as_ref());
    }

    fn print(&self, msg: &str) {
        if self.bars && self.active.get() > 0 {
            // Printed above the bars; falls back to plain stderr if the terminal went away.
            if self.multi.println(msg).is_ok() {
                return;
            }
        }
        eprintln!("{msg}");
    }

    /// The bar over all input files (`None` for a single file).
    pub fn files_bar(&self, files: usize) -> Option<ProgressBar> {
        if !self.bars || files < 2 {
            return None;
        }
        let bar = self.add(ProgressBar::new(files as u64));
        bar.set_style(style("{prefix:>6} [{bar:30.cyan/blue}] {pos}/{len} files {elapsed_precise} {wide_msg}"));
        bar.set_prefix("files");
        Some(bar)
    }

    /// The bar over the pages of a PDF.
    pub fn pages_bar(&self, pages: usize, name: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = self.add(ProgressBar::new(pages as u64));
        bar.set_style(style(
            "{prefix:>6} [{bar:30.green/white}] {pos}/{len} pages {elapsed_precise} eta {eta} {wide_msg}",
        ));
        bar.set_prefix("pages");
        bar.set_message(name.to_string());
        bar
    }

    /// A spinner for the page being generated, showing the token count as it grows.
    pub fn page_spinner(&self, what: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = self.add(ProgressBar::new_spinner());
        bar.set_style(style("{spinner:>6} {prefix} {wide_msg}"));
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    fn add(&self, bar: ProgressBar) -> ProgressBar {
        self.active.set(self.active.get() + 1);
        self.multi.add(bar)
    }

    /// Clears and removes a bar made by this `Ui` (a hidden one is left alone).
    pub fn remove(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        if self.bars && !bar.is_hidden() {
            self.multi.remove(bar);
            self.active.set(self.active.get().saturating_sub(1));
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

/// `12.3 s` / `4 min 05 s`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// Writes `text` to stdout. A closed pipe (`dsocr … | head`) ends the process quietly with
/// `code`: there is no one left to read the rest.
pub fn write_stdout(text: &str, code: i32) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(code),
        other => other,
    }
}
