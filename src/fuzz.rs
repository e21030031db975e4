//! What the fuzz targets (`fuzz/fuzz_targets/`) check, one function each:
//! any bytes in, and a panic only if something that must hold does not.
//! The targets call these, and the test suite replays every file of every
//! corpus through them (`fuzz/corpus/<target>/`), so an input the fuzzer
//! once found stays covered without a nightly compiler.

use chrono::{DateTime, Utc};
use std::sync::OnceLock;

/// A fixed instant, so a corpus file replays the same way every time.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default()
}

/// A mail to the key submission address (`kci inbound`).
pub fn inbound_mail(data: &[u8]) {
    let _ = crate::inbound::parse(data);
}

/// A key block posted or mailed in.
pub fn key_submission(data: &[u8]) {
    let _ = crate::pgp::check_submission(data, "alice@example.com", now());
}

/// A destination URI: parses or is refused; what parses is stored as text
/// that parses back to the same destination.
pub fn destination_uri(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = text.parse::<crate::model::DestinationUri>() {
        let stored = uri.to_string();
        let again = stored.parse::<crate::model::DestinationUri>();
        assert_eq!(again.as_ref(), Ok(&uri), "{text:?} stored as {stored:?}");
    }
}

/// `kci apprise import`: per-line results for any text.
pub fn apprise_urls(data: &[u8]) {
    let _ = crate::channels::apprise::urls::import(&String::from_utf8_lossy(data));
}

fn event_config() -> &'static crate::config::Config {
    static CONFIG: OnceLock<crate::config::Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        crate::config::Config::parse(
            "[types.\"line.down\"]\nhold = \"3m\"\nexpires_after = \"12h\"\nshort = \"down {{ service }}\"\n\
             [types.\"line.up\"]\ncancels = [\"line.down\"]\n[types.notice]\n",
            "fuzz",
        )
        .unwrap_or_else(|e| panic!("the fuzz config: {e}"))
    })
}

/// `POST /v1/events` and `/v1/events/batch`: an event, answered lines, or
/// a refusal; never more lines read than the batch limit.
pub fn event_json(data: &[u8]) {
    if let Ok(input) = crate::ingest::parse(data) {
        let _ = crate::ingest::validate(input, event_config(), now());
    }
    if let Ok(lines) = crate::ingest::parse_batch(data, event_config(), now()) {
        assert!(lines.len() <= crate::ingest::MAX_BATCH_LINES);
    }
}

/// A delivery window (opening_hours): parses or is refused; one that
/// parses says when it next opens, within the horizon, in any zone, and is
/// open then. The first byte picks the zone and the starting instant.
pub fn window(data: &[u8]) {
    const ZONES: [chrono_tz::Tz; 4] = [
        chrono_tz::Europe::London,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::UTC,
    ];
    // Around the clock changes of 2026, and a leap day.
    const STARTS: [i64; 3] = [1_774_746_000, 1_792_890_000, 1_709_164_800];
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(window) = text.parse::<crate::model::Window>() else {
        return;
    };
    let tz = ZONES[usize::from(seed) % ZONES.len()];
    let t = DateTime::from_timestamp(STARTS[usize::from(seed / 4) % STARTS.len()], 0)
        .unwrap_or_default();
    let horizon = t + chrono::Duration::days(400);
    if let Some(open) = window.next_open(t, tz, horizon) {
        assert!(
            open >= t && open <= horizon,
            "{text:?}: {open} outside the search"
        );
        assert!(
            window.is_open(open, tz),
            "{text:?}: said to open at {open}, is not open"
        );
    }
}

/// The SMTP listener's dialogue, driven by whatever a client sends: any
/// bytes end in whole reply lines and a closed session, within the
/// dialogue's bounds; messages taken are read as the listener would
/// (`inbound::parse`), without a store.
pub fn smtp_dialogue(data: &[u8]) {
    use crate::inbound::smtp::{Limits, Names, RECEIVED, dialogue};
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let Some(runtime) = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .ok()
    }) else {
        return;
    };
    runtime.block_on(async {
        let names = Names::new("keys@isp.example");
        let handler = |mail: Vec<u8>| async move {
            match crate::inbound::parse(&mail) {
                Ok(_) => RECEIVED.to_string(),
                Err(e) => format!("554 5.6.0 {e}"),
            }
        };
        let mut said = Vec::new();
        let mut input = tokio::io::BufReader::new(data);
        let _ = dialogue(&mut input, &mut said, &names, Limits::default(), &handler).await;
        assert!(
            said.is_empty() || said.ends_with(b"\r\n"),
            "a reply cut short"
        );
    });
}

#[cfg(test)]
mod tests {
    /// Every file of every corpus, through its target's checks.
    #[test]
    fn every_fuzz_corpus_replays() {
        type Check = fn(&[u8]);
        let targets: [(&str, Check); 7] = [
            ("inbound_mail", super::inbound_mail),
            ("key_submission", super::key_submission),
            ("destination_uri", super::destination_uri),
            ("apprise_urls", super::apprise_urls),
            ("event_json", super::event_json),
            ("window", super::window),
            ("smtp_dialogue", super::smtp_dialogue),
        ];
        for (name, check) in targets {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(name);
            let mut n = 0;
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let replay = std::panic::catch_unwind(|| check(&data));
                assert!(replay.is_ok(), "{} fails its checks", path.display());
                n += 1;
            }
            assert!(n >= 3, "{name}: seeds at least");
        }
    }
}
