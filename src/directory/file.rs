//! The directory as a file (`kci import directory`, `kci export
//! directory`): one row per destination, with its account's and contact's
//! columns (an account or contact without destinations is a row of its
//! own), as CSV with a header row or as NDJSON with the same names. Rows
//! are read one at a time with bounded buffers, so memory stays flat
//! whatever the file holds; each is checked by the same functions as the
//! API's bodies (`super::account`, `super::contact`,
//! `super::destination_input`, `super::destination_uri`).

use super::{AccountFields, Invalid};
use crate::model::{AccountView, ChannelKind, Destination, ImportRow, check_id};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{BufRead, Write};

/// The longest row read, in bytes (a CSV record across its lines, or an
/// NDJSON line): a row is a few hundred bytes; this leaves room for long
/// preference lists and no room for a file that is one endless line.
pub const MAX_ROW: usize = 64 * 1024;

/// The most fields a CSV record may have (there are 15 columns).
pub const MAX_FIELDS: usize = 32;

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// The format a file's name says: `.csv`, or `.ndjson` / `.jsonl`.
    pub fn of_path(path: &std::path::Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// The columns, in the order an export writes them. Their names are the
/// API's field names, prefixed where account, contact and destination
/// would share one.
pub const COLUMNS: [&str; 15] = [
    "account",
    "account_name",
    "timezone",
    "security_level",
    "paranoid",
    "defaults",
    "prefixes",
    "contact",
    "contact_name",
    "contact_timezone",
    "contact_prefs",
    "destination",
    "uri",
    "verified",
    "prefs",
];

/// A row as the file gives it, before it is checked. NDJSON reads into it
/// directly (an unknown field refused); CSV through [`RawRow::from_csv`].
/// Empty strings are absent values.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoid: Option<bool>,
    /// The account's default preferences (the API's `defaults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_timezone: Option<String>,
    /// The contact's preference fields (its API body less `name` and
    /// `timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_prefs: Option<Map<String, Value>>,
    /// The destination's id (absent: a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// The destination's preference fields (its API body less `uri` and
    /// `verified`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefs: Option<Map<String, Value>>,
}

/// A CSV header: the column of each field, by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header(Vec<usize>);

impl Header {
    /// Reads a header row: known column names, each once, `account` among
    /// them.
    pub fn parse(fields: &[String]) -> Result<Header, String> {
        let mut cols = Vec::with_capacity(fields.len());
        for f in fields {
            let name = f.trim();
            let Some(i) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(format!(
                    "unknown column `{}` in the header; the columns are {}",
                    crate::model::excerpt(name, 40),
                    COLUMNS.join(", ")
                ));
            };
            if cols.contains(&i) {
                return Err(format!("column `{name}` twice in the header"));
            }
            cols.push(i);
        }
        if !cols.contains(&0) {
            return Err("the header has no `account` column".into());
        }
        Ok(Header(cols))
    }

    /// Every column, in export order.
    pub fn all() -> Header {
        Header((0..COLUMNS.len()).collect())
    }
}

fn json_cell<T: serde::de::DeserializeOwned>(col: &str, cell: &str) -> Result<T, String> {
    serde_json::from_str(cell).map_err(|e| format!("{col}: not a JSON object ({e})"))
}

fn bool_cell(col: &str, cell: &str) -> Result<bool, String> {
    match cell {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{col}: must be true or false")),
    }
}

impl RawRow {
    /// A CSV record under `header`.
    pub fn from_csv(header: &Header, fields: &[String]) -> Result<RawRow, String> {
        if fields.len() != header.0.len() {
            return Err(format!(
                "{} fields where the header has {}",
                fields.len(),
                header.0.len()
            ));
        }
        let mut row = RawRow::default();
        for (&col, cell) in header.0.iter().zip(fields) {
            if cell.is_empty() {
                continue;
            }
            let name = COLUMNS[col];
            let cell = &unguard(cell);
            let text = Some(cell.clone());
            match col {
                0 => row.account = text,
                1 => row.account_name = text,
                2 => row.timezone = text,
                3 => row.security_level = text,
                4 => row.paranoid = Some(bool_cell(name, cell)?),
                5 => row.defaults = Some(json_cell(name, cell)?),
                6 => row.prefixes = Some(cell.split_whitespace().map(str::to_string).collect()),
                7 => row.contact = text,
                8 => row.contact_name = text,
                9 => row.contact_timezone = text,
                10 => row.contact_prefs = Some(json_cell(name, cell)?),
                11 => row.destination = text,
                12 => row.uri = text,
                13 => row.verified = Some(bool_cell(name, cell)?),
                _ => row.prefs = Some(json_cell(name, cell)?),
            }
        }
        Ok(row)
    }

    /// An NDJSON line, naming a field of the wrong type or unknown.
    pub fn from_json(line: &[u8]) -> Result<RawRow, String> {
        // Serde would read a struct from an array too, by position.
        if line.trim_ascii_start().first() != Some(&b'{') {
            return Err("not a row: a JSON object expected".into());
        }
        let mut de = serde_json::Deserializer::from_slice(line);
        let mut row: RawRow = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                format!("not a row: {inner}")
            } else {
                format!("{path}: {inner}")
            }
        })?;
        de.end().map_err(|e| format!("not a row: {e}"))?;
        // As in CSV, an empty value is no value.
        for v in [
            &mut row.account,
            &mut row.account_name,
            &mut row.timezone,
            &mut row.security_level,
            &mut row.contact,
            &mut row.contact_name,
            &mut row.contact_timezone,
            &mut row.destination,
            &mut row.uri,
        ] {
            if v.as_deref() == Some("") {
                *v = None;
            }
        }
        Ok(row)
    }

    /// The row's cells in `COLUMNS` order, as CSV writes them.
    fn cells(&self) -> [String; 15] {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let flag = |v: Option<bool>| v.map(|b| b.to_string()).unwrap_or_default();
        let json = |v: &Option<Map<String, Value>>| {
            v.as_ref()
                .map(|m| Value::Object(m.clone()).to_string())
                .unwrap_or_default()
        };
        [
            text(&self.account),
            text(&self.account_name),
            text(&self.timezone),
            text(&self.security_level),
            flag(self.paranoid),
            json(&self.defaults),
            self.prefixes
                .as_ref()
                .map(|p| p.join(" "))
                .unwrap_or_default(),
            text(&self.contact),
            text(&self.contact_name),
            text(&self.contact_timezone),
            json(&self.contact_prefs),
            text(&self.destination),
            text(&self.uri),
            flag(self.verified),
            json(&self.prefs),
        ]
    }
}

/// The channels a destination may use and whether plain-http webhooks
/// may leave loopback: what [`super::destination_uri`] needs of the hub.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    pub channels: Vec<ChannelKind>,
    pub allow_http: bool,
}

/// A preference object with none of `taken` (which have columns of their
/// own).
fn prefs_map(
    col: &str,
    map: Option<Map<String, Value>>,
    taken: &[&str],
) -> Result<Map<String, Value>, String> {
    let map = map.unwrap_or_default();
    if let Some(k) = taken.iter().find(|k| map.contains_key(**k)) {
        return Err(format!("{col}: `{k}` has a column of its own"));
    }
    Ok(map)
}

fn invalid(what: &str, e: Invalid) -> String {
    format!("{what} {e}")
}

/// Checks a row as the API checks the bodies it stands for; the reason
/// names the column (and the field inside a JSON column) that is wrong.
pub fn check(raw: RawRow, line: u64, hub: &Hub) -> Result<ImportRow, String> {
    let Some(account_id) = raw.account else {
        return Err("account: is required".into());
    };
    check_id(&account_id).map_err(|e| format!("account: {e}"))?;
    let account_given = raw.account_name.is_some()
        || raw.timezone.is_some()
        || raw.security_level.is_some()
        || raw.paranoid.is_some()
        || raw.defaults.is_some()
        || raw.prefixes.is_some();
    let defaults = super::preferences(prefs_map("defaults", raw.defaults, &[])?)
        .map_err(|e| invalid("defaults:", e))?;
    let fields = AccountFields {
        name: raw.account_name,
        timezone: raw.timezone,
        security_level: raw.security_level,
        paranoid: raw.paranoid,
        defaults,
    };
    let mut account = super::account(account_id.clone(), fields).map_err(|e| e.to_string())?;
    account.prefixes =
        super::prefixes(raw.prefixes.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;

    let contact_given =
        raw.contact_name.is_some() || raw.contact_timezone.is_some() || raw.contact_prefs.is_some();
    let contact = match raw.contact {
        None if contact_given => {
            return Err(
                "contact: is required with contact_name, contact_timezone or contact_prefs".into(),
            );
        }
        None => None,
        Some(cid) => {
            check_id(&cid).map_err(|e| format!("contact: {e}"))?;
            let mut map = prefs_map("contact_prefs", raw.contact_prefs, &["name", "timezone"])?;
            if let Some(name) = raw.contact_name {
                map.insert("name".into(), Value::String(name));
            }
            if let Some(tz) = raw.contact_timezone {
                map.insert("timezone".into(), Value::String(tz));
            }
            let c = super::contact(cid, map).map_err(|e| {
                // The contact's own columns are named as such.
                let field = match e.field.as_str() {
                    "name" => "contact_name".to_string(),
                    "timezone" => "contact_timezone".to_string(),
                    other => format!("contact_prefs: {other}"),
                };
                format!("{field}: {}", e.message)
            })?;
            Some(c)
        }
    };

    let destination_id_given = raw.destination.is_some();
    let destination = match raw.uri {
        None => {
            if raw.destination.is_some() || raw.verified.is_some() || raw.prefs.is_some() {
                return Err("uri: is required with destination, verified or prefs".into());
            }
            None
        }
        Some(uri) => {
            let Some(contact) = &contact else {
                return Err("contact: a destination needs its contact".into());
            };
            let mut map = prefs_map("prefs", raw.prefs, &["uri", "verified"])?;
            map.insert("uri".into(), Value::String(uri));
            map.insert(
                "verified".into(),
                Value::Bool(raw.verified.unwrap_or(false)),
            );
            let input = super::destination_input(map).map_err(|e| match e.field.as_str() {
                "uri" | "verified" => e.to_string(),
                other => format!("prefs: {other}: {}", e.message),
            })?;
            let uri =
                super::destination_uri(&input.uri, |k| hub.channels.contains(&k), hub.allow_http)
                    .map_err(|e| e.to_string())?;
            if let crate::model::DestinationUri::X(crate::model::XUser::Handle(h)) = &uri {
                // Stored is X's lasting id, which only asking X gives.
                return Err(format!(
                    "uri: give @{h}'s numeric X user id: an @handle is resolved only when added through the API"
                ));
            }
            let id = match raw.destination {
                Some(id) => {
                    check_id(&id).map_err(|e| format!("destination: {e}"))?;
                    id
                }
                None => crate::model::new_id(),
            };
            Some(Destination {
                id,
                contact: contact.id.clone(),
                uri,
                prefs: input.prefs,
                verified: input.verified,
                unhealthy_since: None,
            })
        }
    };
    Ok(ImportRow {
        line,
        account,
        account_given,
        contact,
        contact_given,
        destination,
        destination_id_given,
    })
}

/// A value's JSON object, or none when it is empty.
fn object<T: Serialize>(v: &T) -> Option<Map<String, Value>> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) if !m.is_empty() => Some(m),
        _ => None,
    }
}

/// The rows of an account as an export writes them: one per destination,
/// one per contact without any, one for an account without contacts.
/// Every row states its account and contact whole, so each line stands
/// on its own. No secret is among the columns.
pub fn rows_of(view: &AccountView) -> Vec<RawRow> {
    let a = &view.account;
    let account = RawRow {
        account: Some(a.id.clone()),
        account_name: Some(a.name.clone()),
        timezone: a.timezone.map(|t| t.to_string()),
        security_level: Some(a.security_level.as_str().to_string()),
        paranoid: Some(a.paranoid),
        defaults: object(&a.defaults),
        prefixes: (!a.prefixes.is_empty())
            .then(|| a.prefixes.iter().map(|p| p.to_string()).collect()),
        ..RawRow::default()
    };
    if view.contacts.is_empty() {
        return vec![account];
    }
    let mut out = Vec::new();
    for cv in &view.contacts {
        let c = &cv.contact;
        let contact = RawRow {
            contact: Some(c.id.clone()),
            contact_name: Some(c.name.clone()),
            contact_timezone: c.timezone.map(|t| t.to_string()),
            contact_prefs: object(&c.prefs),
            ..account.clone()
        };
        if cv.destinations.is_empty() {
            out.push(contact);
            continue;
        }
        for d in &cv.destinations {
            out.push(RawRow {
                destination: Some(d.id.clone()),
                uri: Some(d.uri.to_string()),
                verified: Some(d.verified),
                prefs: object(&d.prefs),
                ..contact.clone()
            });
        }
    }
    out
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP
/// "CSV injection"): a customer's name such as `=HYPERLINK(...)` must not
/// run in the staff member's spreadsheet that opens an export.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Whether a cell, with its leading quote marks skipped, starts a formula.
fn formula_after_quotes(s: &str) -> bool {
    s.trim_start_matches('\'').starts_with(FORMULA_START)
}

/// A cell as written: one that would start a formula gets a leading `'`
/// (spreadsheets show it as text and hide the mark). So that reading it
/// back gives the value again, a value that already starts with quote
/// marks before a formula character gets one more.
fn guard(s: &str) -> std::borrow::Cow<'_, str> {
    if formula_after_quotes(s) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

/// A cell as read: the inverse of [`guard`]. A `'` before a formula
/// character is the spreadsheet's mark for text, not part of the value;
/// any other leading `'` (`'s-Hertogenbosch`) is kept.
fn unguard(s: &str) -> String {
    match s.strip_prefix('\'') {
        Some(rest) if formula_after_quotes(rest) => rest.to_string(),
        _ => s.to_string(),
    }
}

/// One CSV field, guarded against formulas and quoted where it must be
/// (RFC 4180).
fn csv_field(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    let s = &*guard(s);
    // Edge spaces quoted too, so no spreadsheet trims them.
    let quote = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace);
    if !quote {
        return out.write_all(s.as_bytes());
    }
    out.write_all(b"\"")?;
    out.write_all(s.replace('"', "\"\"").as_bytes())?;
    out.write_all(b"\"")
}

/// Writes what comes before the rows: CSV's header.
pub fn write_header(format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Csv => writeln!(out, "{}", COLUMNS.join(",")),
        Format::Ndjson => Ok(()),
    }
}

/// Writes one row.
pub fn write_row(format: Format, row: &RawRow, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Csv => {
            for (i, cell) in row.cells().iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                csv_field(out, cell)?;
            }
            out.write_all(b"\n")
        }
        Format::Ndjson => {
            serde_json::to_writer(&mut *out, row)?;
            out.write_all(b"\n")
        }
    }
}

/// One record of a file as read: its fields (CSV) or its text (NDJSON),
/// or why it could not be read at all; with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Fields(Vec<String>),
    Json(Vec<u8>),
    Unreadable(String),
}

/// Reads a file's records one by one in at most [`MAX_ROW`] bytes each.
pub struct Reader<R> {
    input: R,
    format: Format,
    csv: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    /// The line the next byte of input is on.
    line: u64,
    done: bool,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R, format: Format) -> Reader<R> {
        Reader {
            input,
            format,
            csv: csv_core::Reader::new(),
            out: vec![0; MAX_ROW],
            ends: vec![0; MAX_FIELDS],
            line: 1,
            done: false,
        }
    }

    /// The next record and the line it starts on; `None` at the end. An
    /// error is the input's own (a read failing), not a bad record.
    pub fn next_record(&mut self) -> std::io::Result<Option<(u64, Record)>> {
        match self.format {
            Format::Csv => self.next_csv(),
            Format::Ndjson => self.next_line(),
        }
    }

    /// The next non-blank line (NDJSON), without its line break.
    fn next_line(&mut self) -> std::io::Result<Option<(u64, Record)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let line = self.line;
            let mut len = 0;
            let mut too_long = false;
            loop {
                let buf = self.input.fill_buf()?;
                if buf.is_empty() {
                    self.done = true;
                    break;
                }
                let (take, end) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                };
                let room = MAX_ROW.saturating_sub(len);
                if take > room {
                    too_long = true;
                } else {
                    self.out[len..len + take].copy_from_slice(&buf[..take]);
                    len += take;
                }
                self.input.consume(take);
                if end {
                    self.line += 1;
                    break;
                }
            }
            if too_long {
                return Ok(Some((
                    line,
                    Record::Unreadable(format!("longer than {MAX_ROW} bytes")),
                )));
            }
            let text = self.out[..len].trim_ascii();
            if text.is_empty() {
                continue;
            }
            return Ok(Some((line, Record::Json(text.to_vec()))));
        }
    }

    /// The next CSV record, fed to the parser a line at a time so the
    /// line it starts on is known (quoted fields may span lines).
    fn next_csv(&mut self) -> std::io::Result<Option<(u64, Record)>> {
        use csv_core::ReadRecordResult as R;
        let mut start: Option<u64> = None;
        let (mut nout, mut nend) = (0, 0);
        let mut bad: Option<String> = None;
        loop {
            if self.done {
                return Ok(None);
            }
            let buf = self.input.fill_buf()?;
            let eof = buf.is_empty();
            let slice = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => &buf[..=i],
                None => buf,
            };
            if start.is_none() && slice.iter().any(|b| !b"\r\n".contains(b)) {
                start = Some(self.line);
            }
            let (res, nin, o, e) =
                self.csv
                    .read_record(slice, &mut self.out[nout..], &mut self.ends[nend..]);
            let newline = slice[..nin].ends_with(b"\n");
            self.input.consume(nin);
            if newline {
                self.line += 1;
            }
            nout += o;
            nend += e;
            match res {
                // The parser asks for more, but there is none: done.
                R::InputEmpty if eof => {
                    self.done = true;
                    return Ok(None);
                }
                R::InputEmpty => {}
                // Too long, or too many fields: the rest of the record is
                // read into the same room and dropped.
                R::OutputFull => {
                    bad.get_or_insert_with(|| format!("longer than {MAX_ROW} bytes"));
                    nout = 0;
                }
                R::OutputEndsFull => {
                    bad.get_or_insert_with(|| format!("more than {MAX_FIELDS} fields"));
                    nend = 0;
                }
                R::Record => {
                    let line = start.unwrap_or(self.line);
                    if let Some(why) = bad {
                        return Ok(Some((line, Record::Unreadable(why))));
                    }
                    return Ok(Some((line, self.fields(nend))));
                }
                R::End => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
    }

    /// The fields of the record just read, whose ends are `ends[..nend]`.
    fn fields(&self, nend: usize) -> Record {
        let mut fields = Vec::with_capacity(nend);
        let mut from = 0;
        for &end in &self.ends[..nend] {
            let Some(bytes) = self.out.get(from..end) else {
                return Record::Unreadable("a field could not be read".into());
            };
            match std::str::from_utf8(bytes) {
                Ok(s) => fields.push(s.to_string()),
                Err(_) => return Record::Unreadable("not UTF-8 text".into()),
            }
            from = end;
        }
        Record::Fields(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, Contact, ContactView, SecurityLevel};

    fn records(format: Format, text: &str) -> Vec<(u64, Record)> {
        let mut r = Reader::new(text.as_bytes(), format);
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec);
        }
        out
    }

    fn fields(v: &[&str]) -> Record {
        Record::Fields(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn csv_records_carry_the_line_they_start_on() {
        let text = "account,uri\nA1,mailto:a@example.com\r\n\nA2,\"line one\nline two\"\nA3,\"a \"\"quoted\"\" word\"";
        assert_eq!(
            records(Format::Csv, text),
            vec![
                (1, fields(&["account", "uri"])),
                (2, fields(&["A1", "mailto:a@example.com"])),
                (4, fields(&["A2", "line one\nline two"])),
                (6, fields(&["A3", "a \"quoted\" word"])),
            ]
        );
        // A UTF-8 byte order mark (spreadsheets write one) is no column.
        assert_eq!(
            records(Format::Csv, "\u{feff}account\nA1\n")[0],
            (1, fields(&["account"]))
        );
    }

    #[test]
    fn oversized_or_broken_records_are_named_and_reading_goes_on() {
        let long = "x".repeat(MAX_ROW + 10);
        let many = vec!["a"; MAX_FIELDS + 1].join(",");
        let text = format!("account\n{long}\n{many}\nA9\n");
        let got = records(Format::Csv, &text);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(matches!(&got[1], (2, Record::Unreadable(w)) if w.contains("longer")));
        assert!(matches!(&got[2], (3, Record::Unreadable(w)) if w.contains("fields")));
        assert_eq!(got[3], (4, fields(&["A9"])));
        let bytes = b"account\nA\xff\nA2\n";
        let mut r = Reader::new(&bytes[..], Format::Csv);
        r.next_record().unwrap();
        assert!(matches!(
            r.next_record().unwrap(),
            Some((2, Record::Unreadable(_)))
        ));
        assert_eq!(r.next_record().unwrap(), Some((3, fields(&["A2"]))));

        let text = format!("{{\"account\":\"A1\"}}\n\n{long}\n{{\"account\":\"A2\"}}");
        let got = records(Format::Ndjson, &text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], (1, Record::Json(b"{\"account\":\"A1\"}".to_vec())));
        assert!(matches!(&got[1], (3, Record::Unreadable(_))));
        assert_eq!(got[2], (4, Record::Json(b"{\"account\":\"A2\"}".to_vec())));
    }

    #[test]
    fn cells_that_would_run_as_formulas_are_written_as_text_and_read_back_as_they_were() {
        // (value, as written)
        let cases = [
            (
                "=HYPERLINK(\"http://x\";\"y\")",
                "'=HYPERLINK(\"http://x\";\"y\")",
            ),
            ("+49 30 1234", "'+49 30 1234"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tcmd", "'\tcmd"),
            ("\r=1", "'\r=1"),
            ("'=1", "''=1"),
            ("''@x", "'''@x"),
            ("'s-Hertogenbosch", "'s-Hertogenbosch"),
            ("'", "'"),
            ("a=b", "a=b"),
            ("", ""),
        ];
        for (value, written) in cases {
            assert_eq!(guard(value), written, "{value:?}");
            assert_eq!(unguard(written), value, "{value:?}");
        }
        // A hand-written cell with the spreadsheet's text mark reads as the text.
        assert_eq!(unguard("'=1+1"), "=1+1");

        // Through a whole row: exported, read back, the same.
        let row = RawRow {
            account: Some("A1".into()),
            account_name: Some("=cmd|' /C calc'!A0".into()),
            contact_name: Some("'s-Hertogenbosch".into()),
            ..RawRow::default()
        };
        let mut out = Vec::new();
        write_row(Format::Csv, &row, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("A1,'=cmd|' /C calc'!A0,"), "{line}");
        let header = Header::parse(&COLUMNS.map(String::from)).unwrap();
        let Some((_, Record::Fields(fields))) = Reader::new(line.as_bytes(), Format::Csv)
            .next_record()
            .unwrap()
        else {
            panic!("no record in {line}");
        };
        assert_eq!(RawRow::from_csv(&header, &fields).unwrap(), row);
    }

    #[test]
    fn headers_are_known_columns_each_once() {
        let h = |v: &[&str]| Header::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(h(&["account", "uri", "verified"]).is_ok());
        assert!(
            h(&["account", "colour"])
                .unwrap_err()
                .contains("unknown column `colour`")
        );
        assert!(h(&["account", "uri", "uri"]).unwrap_err().contains("twice"));
        assert!(h(&["uri"]).unwrap_err().contains("no `account`"));
    }

    fn hub() -> Hub {
        Hub {
            channels: vec![ChannelKind::Email, ChannelKind::Webhook, ChannelKind::X],
            allow_http: false,
        }
    }

    fn csv_row(header: &[&str], cells: &[&str]) -> Result<ImportRow, String> {
        let h = Header::parse(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let raw = RawRow::from_csv(&h, &cells.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        check(raw, 2, &hub())
    }

    #[test]
    fn rows_are_checked_as_the_api_checks_bodies() {
        let h = [
            "account",
            "security_level",
            "contact",
            "contact_prefs",
            "uri",
            "verified",
            "prefs",
        ];
        // (cells, the start of the reason, or "" when valid)
        for (cells, why) in [
            (
                [
                    "A1",
                    "high",
                    "alice",
                    "",
                    "mailto:a@example.com",
                    "true",
                    "",
                ],
                "",
            ),
            (["A1", "", "", "", "", "", ""], ""),
            (["", "", "", "", "", "", ""], "account: is required"),
            (["A 1", "", "", "", "", "", ""], "account: must not contain"),
            (
                ["A1", "extreme", "", "", "", "", ""],
                "security_level: `extreme`",
            ),
            (
                ["A1", "", "", "", "mailto:a@example.com", "", ""],
                "contact: a destination needs",
            ),
            (
                ["A1", "", "alice", "", "sms:+447700900123", "", ""],
                "uri: no sms channel",
            ),
            (
                ["A1", "", "alice", "", "http://example.com/h", "", ""],
                "uri: plain http",
            ),
            (
                ["A1", "", "alice", "", "mailto:a@example.com", "yes", ""],
                "verified: must be",
            ),
            (
                [
                    "A1",
                    "",
                    "alice",
                    "",
                    "mailto:a@example.com",
                    "",
                    "{\"digest\":\"often\"}",
                ],
                "prefs: digest",
            ),
            (
                [
                    "A1",
                    "",
                    "alice",
                    "",
                    "mailto:a@example.com",
                    "",
                    "{\"uri\":\"x\"}",
                ],
                "prefs: `uri` has",
            ),
            (
                ["A1", "", "alice", "", "mailto:a@example.com", "", "[1]"],
                "prefs: not a JSON object",
            ),
            (
                ["A1", "", "alice", "{\"timezone\":\"UTC\"}", "", "", ""],
                "contact_prefs: `timezone` has",
            ),
            (
                ["A1", "", "alice", "{\"window\":\"never ever\"}", "", "", ""],
                "contact_prefs: window",
            ),
            (["A1", "", "", "", "", "true", ""], "uri: is required"),
            (["A1", "", "alice", "", "x:2244994945", "", ""], ""),
            (
                ["A1", "", "alice", "", "x:@XDevelopers", "", ""],
                "uri: give @XDevelopers's numeric X user id",
            ),
        ] {
            let got = csv_row(&h, &cells);
            match (why, &got) {
                ("", Ok(_)) => {}
                (want, Err(e)) if !want.is_empty() && e.starts_with(want) => {}
                _ => panic!("{cells:?}: {got:?}, wanted {why:?}"),
            }
        }
        let r = csv_row(
            &h,
            &[
                "A1",
                "high",
                "alice",
                "",
                "mailto:a@example.com",
                "true",
                "",
            ],
        )
        .unwrap();
        assert!(r.account_given && !r.contact_given && !r.destination_id_given);
        assert_eq!(r.account.security_level, SecurityLevel::High);
        assert!(r.destination.unwrap().verified);
        let r = csv_row(&["account", "contact"], &["A1", "bob"]).unwrap();
        assert!(!r.account_given && r.account.name == "A1");
        assert_eq!(r.contact.unwrap().name, "bob");
    }

    #[test]
    fn ndjson_rows_name_a_field_of_the_wrong_type() {
        for (line, why) in [
            (
                r#"{"account":"A1","verified":"yes"}"#,
                "verified: invalid type",
            ),
            (
                r#"{"account":"A1","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (r#"["A1"]"#, "not a row"),
            (r#"{"account":"A1","#, "EOF"),
            (
                r#"{"account":"A1"} {"account":"A2"}"#,
                "trailing characters",
            ),
        ] {
            let err = RawRow::from_json(line.as_bytes()).expect_err(line);
            assert!(err.contains(why), "{line}: {err}");
        }
        let raw =
            RawRow::from_json(br#"{"account":"A1","account_name":"","prefixes":["10.0.0.0/8"]}"#)
                .unwrap();
        assert_eq!(raw.account_name, None);
        assert!(check(raw, 1, &hub()).unwrap().account_given);
    }

    #[test]
    fn an_exported_row_reads_back_as_it_was() {
        let view = AccountView {
            account: Account {
                id: "A1".into(),
                name: "Alice, \"the\" Ltd".into(),
                timezone: Some("Europe/London".parse().unwrap()),
                security_level: SecurityLevel::High,
                paranoid: true,
                defaults: super::super::preferences(
                    serde_json::from_str(r#"{"window":"Mo-Fr 08:00-20:00","digest":"1h"}"#)
                        .unwrap(),
                )
                .unwrap(),
                prefixes: vec!["203.0.113.0/24".parse().unwrap()],
                postal_address: None,
            },
            contacts: vec![
                ContactView {
                    contact: Contact {
                        id: "alice".into(),
                        name: "Alice\nSmith".into(),
                        timezone: Some("Europe/Paris".parse().unwrap()),
                        prefs: super::super::preferences(
                            serde_json::from_str(r#"{"min_priority":"high"}"#).unwrap(),
                        )
                        .unwrap(),
                    },
                    destinations: vec![Destination {
                        id: "d1".into(),
                        contact: "alice".into(),
                        uri: "mailto:alice@example.com".parse().unwrap(),
                        prefs: super::super::preferences(
                            serde_json::from_str(r#"{"services":["fibre"]}"#).unwrap(),
                        )
                        .unwrap(),
                        verified: true,
                        unhealthy_since: None,
                    }],
                },
                ContactView {
                    contact: Contact {
                        id: "bob".into(),
                        name: "Bob".into(),
                        timezone: None,
                        prefs: Default::default(),
                    },
                    destinations: vec![],
                },
            ],
        };
        for format in [Format::Csv, Format::Ndjson] {
            let mut out = Vec::new();
            write_header(format, &mut out).unwrap();
            for row in rows_of(&view) {
                write_row(format, &row, &mut out).unwrap();
            }
            let mut r = Reader::new(&out[..], format);
            let mut header = Header::all();
            let mut back = Vec::new();
            while let Some((line, rec)) = r.next_record().unwrap() {
                let raw = match rec {
                    Record::Fields(f) if line == 1 => {
                        header = Header::parse(&f).unwrap();
                        continue;
                    }
                    Record::Fields(f) => RawRow::from_csv(&header, &f).unwrap(),
                    Record::Json(j) => RawRow::from_json(&j).unwrap(),
                    Record::Unreadable(w) => panic!("{w}"),
                };
                back.push(check(raw, line, &hub()).unwrap());
            }
            assert_eq!(back.len(), 2, "{format:?}");
            assert_eq!(back[0].account, view.account, "{format:?}");
            assert_eq!(back[0].contact.as_ref(), Some(&view.contacts[0].contact));
            assert_eq!(
                back[0].destination.as_ref(),
                Some(&view.contacts[0].destinations[0])
            );
            assert!(back[0].destination_id_given);
            assert_eq!(back[1].contact.as_ref(), Some(&view.contacts[1].contact));
            assert_eq!(back[1].destination, None);
        }
    }
}
