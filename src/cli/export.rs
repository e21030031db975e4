//! `kci export directory`: every account, contact and destination in the
//! format `kci import directory` reads (docs/import.md), read from the
//! store a page of accounts at a time so memory stays flat. No secret is
//! written: destinations' signing secrets and codes are not columns.

use super::ConfigArg;
use crate::directory::file::{self, Format};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Accounts read per page.
const PAGE: usize = 500;

pub async fn directory(
    arg: ConfigArg,
    format: Format,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let mut sink: Box<dyn Write> = match &out {
        // Customers' addresses and numbers: readable by the operator only.
        Some(p) => {
            Box::new(std::io::BufWriter::new(create_private(p).map_err(|e| {
                anyhow::anyhow!("cannot write {}: {e}", p.display())
            })?))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    file::write_header(format, &mut sink)?;
    let (mut accounts, mut rows) = (0u64, 0u64);
    let mut after: Option<String> = None;
    loop {
        let page = store.directory_page(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.account.id.clone());
        for view in &page {
            accounts += 1;
            for row in file::rows_of(view) {
                file::write_row(format, &row, &mut sink)?;
                rows += 1;
            }
        }
    }
    sink.flush()?;
    eprintln!("kci export: {accounts} accounts in {rows} rows");
    Ok(ExitCode::SUCCESS)
}

/// A new or truncated file that only its owner may read.
pub(super) fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
