//! `kci import directory FILE`: accounts, contacts and destinations in
//! bulk (docs/import.md). The file is streamed: rows are read and checked
//! one at a time (`directory::file`), gathered into batches that the store
//! writes one transaction each (`DirectoryStore::import_directory`, the
//! rule `directory::import::decide`), the next batch read while the last
//! is written. Refused rows are reported as `line N: reason`.

use super::ConfigArg;
use crate::directory::file::{self, Format, Header, RawRow, Reader, Record};
use crate::model::{ImportBatch, ImportCounts, ImportOutcome, ImportRow};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rows per transaction: SQLite's commits are what costs; PostgreSQL
/// holds a lock per account until its transaction ends.
fn batch_size(store_url: &str) -> usize {
    if crate::store::sqlite_path(store_url).is_some() {
        5_000
    } else {
        1_000
    }
}

/// A batch is not cut inside an account's lines unless it grows this many
/// times its size: a new account is then created whole in one batch.
const STRETCH: usize = 4;

/// How often progress is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Exit 0 when every row was imported or unchanged, 1 when some were
/// refused, 2 when the file could not be used or the import stopped.
pub async fn directory(
    arg: ConfigArg,
    path: PathBuf,
    format: Option<Format>,
    report: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    match run(arg, &path, format, report).await {
        Ok(counts) if counts.refused > 0 => Ok(ExitCode::from(1)),
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            // The header's words may be the file's: shown, not sent.
            eprintln!("kci import: {}", one_line(&format!("{e:#}")));
            Ok(ExitCode::from(2))
        }
    }
}

/// Counts the bytes read, for the progress bar.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The input, its size if known, the name the audit and report use, and
/// the count of bytes read so far.
struct Input {
    reader: Box<dyn BufRead + Send>,
    size: Option<u64>,
    name: String,
    read: Arc<AtomicU64>,
}

fn open(path: &Path) -> anyhow::Result<Input> {
    let read = Arc::new(AtomicU64::new(0));
    if path.as_os_str() == "-" {
        let input = Counted {
            inner: std::io::stdin(),
            read: read.clone(),
        };
        return Ok(Input {
            reader: Box::new(std::io::BufReader::with_capacity(256 * 1024, input)),
            size: None,
            name: "stdin".into(),
            read,
        });
    }
    let f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let size = f.metadata().ok().map(|m| m.len());
    let input = Counted {
        inner: f,
        read: read.clone(),
    };
    Ok(Input {
        reader: Box::new(std::io::BufReader::with_capacity(256 * 1024, input)),
        size,
        name: path.display().to_string(),
        read,
    })
}

/// A reason as one line of plain text: a file's control characters (a
/// terminal's escape sequences among them) are shown, not sent.
fn one_line(why: &str) -> String {
    let clean: String = why
        .chars()
        .flat_map(|c| {
            let shown: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            shown
        })
        .collect();
    crate::model::excerpt(&clean, 500)
}

/// Where refused rows and the summary go: a file, or stderr beside the
/// progress bar.
struct Report {
    file: Option<std::io::BufWriter<std::fs::File>>,
    bar: Option<indicatif::ProgressBar>,
}

impl Report {
    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        match (&mut self.file, &self.bar) {
            (Some(f), _) => writeln!(f, "{text}")?,
            (None, Some(bar)) => bar.suspend(|| eprintln!("{text}")),
            (None, None) => eprintln!("{text}"),
        }
        Ok(())
    }
}

/// What was read for one line: a row for the store, or a refusal.
enum Item {
    Row,
    Refused(u64, String),
}

/// A batch handed to the store, with what it was made of.
struct Pending {
    items: Vec<Item>,
    lines: Vec<u64>,
    task: tokio::task::JoinHandle<crate::store::Result<Vec<ImportOutcome>>>,
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    read: Arc<AtomicU64>,
    started: Instant,
    last_plain: Instant,
}

impl Progress {
    fn new(size: Option<u64>, read: Arc<AtomicU64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = |template: &str| {
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            };
            match size {
                Some(len) => indicatif::ProgressBar::new(len).with_style(style(
                    "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg}",
                )),
                None => indicatif::ProgressBar::new_spinner()
                    .with_style(style("{elapsed_precise} {spinner} {bytes} {msg}")),
            }
        });
        if let Some(bar) = &bar {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Progress {
            bar,
            read,
            started: Instant::now(),
            last_plain: Instant::now(),
        }
    }

    fn rate(&self, rows: u64) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            (rows as f64 / secs) as u64
        } else {
            0
        }
    }

    fn show(&mut self, line: u64, counts: &ImportCounts) {
        let rows = counts.rows();
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.read.load(Ordering::Relaxed));
                bar.set_message(format!("{rows} rows, {}/s", self.rate(rows)));
            }
            None if self.last_plain.elapsed() >= PLAIN_EVERY => {
                self.last_plain = Instant::now();
                eprintln!(
                    "kci import: line {line}, {rows} rows ({} rows/s): {counts}",
                    self.rate(rows)
                );
            }
            None => {}
        }
    }
}

async fn run(
    arg: ConfigArg,
    path: &Path,
    format: Option<Format>,
    report: Option<PathBuf>,
) -> anyhow::Result<ImportCounts> {
    let format = match (format, Format::of_path(path)) {
        (Some(f), _) | (None, Some(f)) => f,
        (None, None) => anyhow::bail!(
            "cannot tell the format of {}: name it .csv, .ndjson or .jsonl, or say --format csv|ndjson",
            path.display()
        ),
    };
    let Input {
        reader: input,
        size,
        name,
        read,
    } = open(path)?;
    let config = super::load_config(&arg)?;
    let channels = crate::channels::Channels::from_config(&config.channels, &config.email, None)?;
    let hub = file::Hub {
        channels: channels.kinds().collect(),
        allow_http: config.channels.webhook.allow_http,
    };
    let url = config.store.url.expose();
    let store = crate::store::open(url).await?;
    let batch = batch_size(url);
    let mut report = Report {
        file: match &report {
            // It quotes the file's rows: as private as the file.
            Some(p) => Some(std::io::BufWriter::new(
                super::export::create_private(p)
                    .map_err(|e| anyhow::anyhow!("cannot write the report {}: {e}", p.display()))?,
            )),
            None => None,
        },
        bar: None,
    };
    let mut progress = Progress::new(size, read);
    report.bar = progress.bar.clone();

    let mut reader = Reader::new(input, format);
    let header = match format {
        Format::Ndjson => None,
        Format::Csv => match reader.next_record()? {
            None => anyhow::bail!("{name} is empty: a CSV file starts with a header row"),
            Some((line, Record::Fields(f))) => {
                Some(Header::parse(&f).map_err(|e| anyhow::anyhow!("{name} line {line}: {e}"))?)
            }
            Some((line, _)) => anyhow::bail!("{name} line {line}: the header row cannot be read"),
        },
    };

    let mut counts = ImportCounts::default();
    let mut items: Vec<Item> = Vec::new();
    let mut rows: Vec<ImportRow> = Vec::new();
    let mut lines: Vec<u64> = Vec::new();
    let mut pending: Option<Pending> = None;
    let (mut first_line, mut last_line) = (0, 0);
    loop {
        let next = reader.next_record()?;
        let item = next.map(|(line, rec)| {
            let row = match rec {
                Record::Fields(f) => header
                    .as_ref()
                    .ok_or_else(|| "not CSV".to_string())
                    .and_then(|h| RawRow::from_csv(h, &f)),
                Record::Json(j) => RawRow::from_json(&j),
                Record::Unreadable(why) => Err(why),
            }
            .and_then(|raw| file::check(raw, line, &hub));
            (line, row)
        });
        // Cut the batch at an account's first line once it is full (or
        // far past full), and at the end.
        let cut = match &item {
            None => !items.is_empty(),
            Some((_, row)) => {
                let full = items.len() >= batch;
                let same = match (row, rows.last()) {
                    (Ok(r), Some(last)) => r.account.id == last.account.id,
                    _ => false,
                };
                (full && !same) || items.len() >= batch * STRETCH
            }
        };
        if cut {
            let what = format!("{name} lines {first_line}–{last_line}");
            let refused_before = items
                .iter()
                .filter(|i| matches!(i, Item::Refused(..)))
                .count() as u64;
            let job = ImportBatch {
                rows: std::mem::take(&mut rows),
                actor: "cli".into(),
                what,
                refused_before,
                at: chrono::Utc::now(),
            };
            let store = store.clone();
            let task = tokio::spawn(async move {
                store
                    .import_directory(job, crate::directory::import::decide)
                    .await
            });
            if let Some(p) = pending.take() {
                finish(p, &mut counts, &mut report).await?;
                progress.show(last_line, &counts);
            }
            pending = Some(Pending {
                items: std::mem::take(&mut items),
                lines: std::mem::take(&mut lines),
                task,
            });
        }
        let Some((line, row)) = item else { break };
        if items.is_empty() {
            first_line = line;
        }
        last_line = line;
        match row {
            Ok(r) => {
                rows.push(r);
                lines.push(line);
                items.push(Item::Row);
            }
            Err(why) => items.push(Item::Refused(line, why)),
        }
    }
    if let Some(p) = pending.take() {
        finish(p, &mut counts, &mut report).await?;
    }
    progress.show(last_line, &counts);
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    let secs = progress.started.elapsed().as_secs_f64();
    let summary = format!(
        "kci import: {} rows from {name} in {secs:.1} s ({} rows/s): {counts}",
        counts.rows(),
        progress.rate(counts.rows())
    );
    if let Some(f) = &mut report.file {
        writeln!(f, "{summary}")?;
        f.flush()?;
    }
    eprintln!("{summary}");
    Ok(counts)
}

/// Waits for a batch, and reports its refused rows in line order.
async fn finish(p: Pending, counts: &mut ImportCounts, report: &mut Report) -> anyhow::Result<()> {
    let outcomes = p.task.await??;
    let mut outcomes = outcomes.into_iter().zip(p.lines);
    for item in p.items {
        let (line, outcome) = match item {
            Item::Refused(line, why) => (line, ImportOutcome::Refused(why)),
            Item::Row => match outcomes.next() {
                Some((o, line)) => (line, o),
                None => anyhow::bail!("the store answered fewer rows than it was given"),
            },
        };
        if let ImportOutcome::Refused(why) = &outcome {
            report.line(&format!("line {line}: {}", one_line(why)))?;
        }
        counts.add(&outcome);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_line_of_plain_text() {
        assert_eq!(one_line("uri: `\u{1b}[31mred`"), "uri: `\\u{1b}[31mred`");
        assert_eq!(one_line("a\nb"), "a\\nb");
        assert!(one_line(&"x".repeat(2000)).chars().count() <= 500);
    }
}
