//! `kci apprise import` and `kci apprise export`: Apprise URLs to kci's
//! destinations and channel config, and back, for the operator's own
//! services. Import prints a TOML snippet on stdout and each bad line on
//! stderr; export prints Apprise URLs, credentials included (the operator
//! asked for them).

use super::ConfigArg;
use crate::channels::apprise::urls;
use crate::model::DestinationUri;
use anyhow::Context;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

/// Reads Apprise URLs from `source` (`-`: stdin). Fails (after printing
/// everything else) when a line could not be read.
pub fn import(source: &Path) -> anyhow::Result<ExitCode> {
    let text = if source == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?
    };
    let results = urls::import(&text);
    let (out, errors) = urls::render_import(&results);
    print!("{out}");
    for e in &errors {
        eprintln!("kci: {}: {e}", source.display());
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints Apprise URLs for the config's enabled channels, with `to` (kci
/// destination URIs) as their targets.
pub fn export(config: ConfigArg, to: Vec<String>) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&config)?;
    let to = to
        .iter()
        .map(|s| {
            s.parse::<DestinationUri>()
                .map_err(|e| anyhow::anyhow!("--to {s}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    print!("{}", urls::export(&config, &to));
    Ok(ExitCode::SUCCESS)
}
