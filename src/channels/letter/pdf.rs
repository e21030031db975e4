//! A letter as a print-ready PDF: A4, laid out for a C5/6 window envelope
//! after DIN 5008 (form B) — the operator's letterhead at the top, the
//! return line and the recipient's address in the window (20 mm from the
//! left, 45 mm from the top, 85 × 45 mm), the date and the reference
//! beside it, the subject, then the message wrapped to the page and
//! flowing onto further pages, each numbered; fold marks at 105 and
//! 210 mm and the punch mark at 148.5 mm on the left edge.
//!
//! [`render`] is pure: the same letter gives the same bytes. Text is set
//! in DejaVu Sans (regular and bold, embedded and subset: names with
//! umlauts and accents print as written; `assets/fonts/LICENSE`), shaped
//! by krilla; wrapping measures it with the font's own advance widths.

use crate::model::PostalAddress;
use krilla::geom::{PathBuilder, Point};
use krilla::page::PageSettings;
use krilla::paint::Stroke;
use krilla::text::{Font, TextDirection};
use skrifa::MetadataProvider;

/// The regular face (DejaVu Sans 2.37, Bitstream Vera licence).
static REGULAR: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
/// The bold face, for the sender's name and the subject.
static BOLD: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-Bold.ttf");

/// A4 in points.
pub const PAGE_WIDTH: f32 = 595.28;
pub const PAGE_HEIGHT: f32 = 841.89;
/// The most bytes of a letter's body kci sets.
pub const MAX_BODY: usize = 64 * 1024;
/// The most pages of one letter (each sheet is paid for).
pub const MAX_PAGES: usize = 8;
/// The most lines of a letterhead's address.
pub const MAX_SENDER_LINES: usize = 3;

/// Points in `mm` millimetres.
fn mm(mm: f32) -> f32 {
    mm * 72.0 / 25.4
}

/// Left edge of the text (DIN 5008: 25 mm).
const LEFT: f32 = 25.0;
/// Right edge of the text (20 mm margin).
const RIGHT: f32 = 190.0;
/// The window (DIN 5008 form B, C5/6 envelope).
const WINDOW_LEFT: f32 = 20.0;
const WINDOW_TOP: f32 = 45.0;
const WINDOW_WIDTH: f32 = 85.0;
/// Where the address zone of the window begins (after the 5 mm return
/// zone and the 12.7 mm remarks zone).
const ADDRESS_TOP: f32 = 62.7;
/// The information block beside the window.
const INFO_LEFT: f32 = 125.0;
/// The subject's baseline on the first page.
const SUBJECT_TOP: f32 = 102.0;
/// Where text ends on every page (the footer below).
const BOTTOM: f32 = 270.0;
/// The footer's baseline (page numbers).
const FOOTER: f32 = 285.0;
/// Where text begins on the following pages (under their header).
const NEXT_TOP: f32 = 30.0;

const BODY_SIZE: f32 = 10.0;
const BODY_LEADING: f32 = 14.0;

/// Who writes: the operator's letterhead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letterhead {
    pub name: String,
    /// The operator's address, at most [`MAX_SENDER_LINES`] lines (also
    /// the return line above the window).
    pub lines: Vec<String>,
    /// ISO 3166-1 alpha-2: a letter to an address in it prints no country.
    pub country: Option<String>,
}

/// One letter, ready to set.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    pub from: &'a Letterhead,
    pub to: &'a PostalAddress,
    /// As printed (`2026-03-22`).
    pub date: &'a str,
    /// The notification's id: what the customer quotes.
    pub reference: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
}

/// A letter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printed {
    pub pdf: Vec<u8>,
    pub pages: usize,
}

/// Why a letter cannot be printed (never worth trying again as it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrintError {
    #[error("the message is {0} bytes long; a letter takes at most {MAX_BODY}")]
    BodyTooLong(usize),
    #[error("the message would take {0} pages; a letter has at most {MAX_PAGES}")]
    TooManyPages(usize),
    #[error("the PDF could not be written: {0}")]
    Pdf(String),
}

/// A face's advance widths, for wrapping.
struct Metrics<'a> {
    charmap: skrifa::charmap::Charmap<'a>,
    glyphs: skrifa::metrics::GlyphMetrics<'a>,
}

impl<'a> Metrics<'a> {
    fn new(data: &'a [u8]) -> Result<Metrics<'a>, PrintError> {
        let font = skrifa::FontRef::new(data).map_err(|e| PrintError::Pdf(e.to_string()))?;
        Ok(Metrics {
            charmap: font.charmap(),
            // Widths of a 1-point font: scaled by the size when measured.
            glyphs: font.glyph_metrics(
                skrifa::instance::Size::new(1.0),
                skrifa::instance::LocationRef::default(),
            ),
        })
    }

    /// The width of `c` at 1 pt (a missing glyph as the font's box).
    fn char_width(&self, c: char) -> f32 {
        let gid = self.charmap.map(c).unwrap_or_default();
        self.glyphs.advance_width(gid).unwrap_or(0.6)
    }

    fn width(&self, text: &str, size: f32) -> f32 {
        text.chars().map(|c| self.char_width(c)).sum::<f32>() * size
    }

    /// `text` in lines of at most `width` points at `size`: paragraphs
    /// kept, words wrapped, a word longer than a line broken.
    fn wrap(&self, text: &str, size: f32, width: f32) -> Vec<String> {
        let space = self.char_width(' ') * size;
        let mut out = Vec::new();
        for para in text.lines() {
            let mut line = String::new();
            let mut used = 0.0;
            for word in para.split_whitespace() {
                let w = self.width(word, size);
                if !line.is_empty() && used + space + w <= width {
                    line.push(' ');
                    line.push_str(word);
                    used += space + w;
                    continue;
                }
                if !line.is_empty() {
                    out.push(std::mem::take(&mut line));
                    used = 0.0;
                }
                for c in word.chars() {
                    let cw = self.char_width(c) * size;
                    if !line.is_empty() && used + cw > width {
                        out.push(std::mem::take(&mut line));
                        used = 0.0;
                    }
                    line.push(c);
                    used += cw;
                }
            }
            out.push(line);
        }
        out
    }

    /// The size at most `size` at which `text` fits `width` (never below
    /// 6 pt: an address line is bounded, so it fits long before).
    fn fit(&self, text: &str, size: f32, width: f32) -> f32 {
        let w = self.width(text, size);
        if w <= width {
            size
        } else {
            (size * width / w).max(6.0)
        }
    }
}

/// Control characters print as nothing useful: tabs and the like become
/// spaces, line breaks stay.
fn printable(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect()
}

/// The body's lines, page by page (the first page has less room).
fn paginate(lines: Vec<String>, first_top: f32) -> Vec<Vec<String>> {
    let per_page = |top: f32| (((mm(BOTTOM) - mm(top)) / BODY_LEADING).floor() as usize).max(1);
    let mut pages = Vec::new();
    let mut rest = lines.into_iter().peekable();
    let mut room = per_page(first_top);
    loop {
        let page: Vec<String> = rest.by_ref().take(room).collect();
        pages.push(page);
        if rest.peek().is_none() {
            break;
        }
        room = per_page(NEXT_TOP);
    }
    pages
}

/// Sets `letter` as a PDF.
pub fn render(letter: &Letter) -> Result<Printed, PrintError> {
    if letter.body.len() > MAX_BODY {
        return Err(PrintError::BodyTooLong(letter.body.len()));
    }
    let regular = Metrics::new(REGULAR)?;
    let bold = Metrics::new(BOLD)?;
    let text_width = mm(RIGHT - LEFT);

    // The subject in bold, at most two lines; then the body.
    let subject = printable(letter.subject).replace('\n', " ");
    let mut subject_lines = bold.wrap(&subject, 11.0, text_width);
    if subject_lines.len() > 2 {
        subject_lines.truncate(2);
        subject_lines[1].push('…');
    }
    let body_top = SUBJECT_TOP + (subject_lines.len() as f32 + 1.0) * 5.5;
    let body = body_lines(&regular, &printable(letter.body), text_width);
    let pages = paginate(body, body_top);
    if pages.len() > MAX_PAGES {
        return Err(PrintError::TooManyPages(pages.len()));
    }

    let font = |data: &'static [u8]| {
        Font::new(krilla::Data::from(data), 0)
            .ok_or_else(|| PrintError::Pdf("the embedded font does not load".into()))
    };
    let (face, face_bold) = (font(REGULAR)?, font(BOLD)?);
    let settings = PageSettings::from_wh(PAGE_WIDTH, PAGE_HEIGHT)
        .ok_or_else(|| PrintError::Pdf("no A4 page".into()))?;
    let mut doc = krilla::Document::new();
    doc.set_metadata(
        krilla::metadata::Metadata::new()
            .title(format!("{} ({})", subject, letter.reference))
            .creator(format!("kci {}", env!("CARGO_PKG_VERSION")))
            .authors(vec![letter.from.name.clone()]),
    );
    let total = pages.len();
    for (i, lines) in pages.iter().enumerate() {
        let mut page = doc.start_page_with(settings.clone());
        let mut s = page.surface();
        let text =
            |s: &mut krilla::surface::Surface, bold: bool, size: f32, x: f32, y: f32, t: &str| {
                let f = if bold {
                    face_bold.clone()
                } else {
                    face.clone()
                };
                s.draw_text(Point::from_xy(x, y), f, size, t, false, TextDirection::Auto);
            };
        marks(&mut s);
        let top = if i == 0 {
            // Letterhead.
            let name = &letter.from.name;
            text(
                &mut s,
                true,
                bold.fit(name, 14.0, text_width),
                mm(LEFT),
                mm(20.0),
                name,
            );
            for (n, l) in letter.from.lines.iter().take(MAX_SENDER_LINES).enumerate() {
                text(&mut s, false, 8.0, mm(LEFT), mm(26.0 + 4.0 * n as f32), l);
            }
            // The window: the return line, then the address.
            let inner = mm(WINDOW_WIDTH - 10.0);
            let x = mm(WINDOW_LEFT + 5.0);
            let back = std::iter::once(letter.from.name.as_str())
                .chain(
                    letter
                        .from
                        .lines
                        .iter()
                        .take(MAX_SENDER_LINES)
                        .map(String::as_str),
                )
                .collect::<Vec<_>>()
                .join(" · ");
            text(
                &mut s,
                false,
                regular.fit(&back, 7.0, inner),
                x,
                mm(WINDOW_TOP + 3.5),
                &back,
            );
            rule(&mut s, x, x + inner, mm(WINDOW_TOP + 4.5));
            let home = letter.from.country.as_deref();
            for (n, l) in letter.to.window_lines(home).iter().enumerate() {
                let size = regular.fit(l, BODY_SIZE, inner);
                text(
                    &mut s,
                    false,
                    size,
                    x,
                    mm(ADDRESS_TOP + 4.0) + n as f32 * 12.0,
                    l,
                );
            }
            // Beside the window: the date and the reference.
            let info = mm(RIGHT - INFO_LEFT);
            for (n, l) in [
                format!("Date: {}", letter.date),
                format!("Reference: {}", letter.reference),
            ]
            .iter()
            .enumerate()
            {
                let size = regular.fit(l, 8.0, info);
                text(
                    &mut s,
                    false,
                    size,
                    mm(INFO_LEFT),
                    mm(WINDOW_TOP + 5.0) + n as f32 * 11.0,
                    l,
                );
            }
            for (n, l) in subject_lines.iter().enumerate() {
                text(
                    &mut s,
                    true,
                    11.0,
                    mm(LEFT),
                    mm(SUBJECT_TOP + 5.5 * n as f32),
                    l,
                );
            }
            body_top
        } else {
            let head = format!("{} · {}", letter.from.name, letter.reference);
            text(
                &mut s,
                false,
                regular.fit(&head, 8.0, text_width),
                mm(LEFT),
                mm(18.0),
                &head,
            );
            NEXT_TOP
        };
        for (n, l) in lines.iter().enumerate() {
            text(
                &mut s,
                false,
                BODY_SIZE,
                mm(LEFT),
                mm(top) + n as f32 * BODY_LEADING,
                l,
            );
        }
        let footer = format!("Page {} of {total}", i + 1);
        let w = regular.width(&footer, 8.0);
        text(&mut s, false, 8.0, mm(RIGHT) - w, mm(FOOTER), &footer);
        s.finish();
        page.finish();
    }
    let pdf = doc
        .finish()
        .map_err(|e| PrintError::Pdf(format!("{e:?}")))?;
    Ok(Printed { pdf, pages: total })
}

/// The body's lines at the body's size.
fn body_lines(regular: &Metrics, body: &str, width: f32) -> Vec<String> {
    let mut lines = regular.wrap(body.trim_end(), BODY_SIZE, width);
    // No blank lines at the top of the body.
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    lines.drain(..first);
    lines
}

/// A thin horizontal line from `x0` to `x1` at `y`.
fn rule(s: &mut krilla::surface::Surface, x0: f32, x1: f32, y: f32) {
    let mut p = PathBuilder::new();
    p.move_to(x0, y);
    p.line_to(x1, y);
    if let Some(path) = p.finish() {
        s.set_stroke(Some(Stroke {
            width: 0.4,
            ..Stroke::default()
        }));
        s.draw_path(&path);
        s.set_stroke(None);
    }
}

/// The fold marks (105 and 210 mm) and the punch mark (148.5 mm).
fn marks(s: &mut krilla::surface::Surface) {
    for (y, len) in [(105.0, 5.0), (148.5, 7.0), (210.0, 5.0)] {
        rule(s, mm(3.5), mm(3.5 + len), mm(y));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PostalInput;

    pub(crate) fn address() -> PostalAddress {
        PostalAddress::parse(PostalInput {
            name: "Jörg Müller".into(),
            lines: vec!["Hauptstraße 5".into(), "c/o Ærøskøbing Café".into()],
            postcode: "10115".into(),
            town: "Berlin".into(),
            country: "DE".into(),
        })
        .unwrap()
    }

    pub(crate) fn letterhead() -> Letterhead {
        Letterhead {
            name: "Example ISP".into(),
            lines: vec!["1 Fibre Street".into(), "EC1A 1BB London".into()],
            country: Some("GB".into()),
        }
    }

    fn letter<'a>(from: &'a Letterhead, to: &'a PostalAddress, body: &'a str) -> Letter<'a> {
        Letter {
            from,
            to,
            date: "2026-03-22",
            reference: "01a20000-0000-7000-8000-000000000001",
            subject: "Your contract ends",
            body,
        }
    }

    #[test]
    fn the_same_letter_gives_the_same_pdf_on_one_a4_page() {
        let (from, to) = (letterhead(), address());
        let a = render(&letter(&from, &to, "Dear customer,\n\nyour contract ends.")).unwrap();
        let b = render(&letter(&from, &to, "Dear customer,\n\nyour contract ends.")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.pages, 1);
        assert!(a.pdf.starts_with(b"%PDF-"));
        // The page size, as the PDF states it.
        let text = String::from_utf8_lossy(&a.pdf);
        assert!(
            text.contains("/MediaBox [0 0 595.28 841.89]"),
            "no A4 MediaBox"
        );
    }

    #[test]
    fn long_messages_flow_onto_numbered_pages_and_are_bounded() {
        let (from, to) = (letterhead(), address());
        let para = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore. ";
        let body = para.repeat(60);
        let two = render(&letter(&from, &to, &body)).unwrap();
        assert!(two.pages >= 2, "{} pages", two.pages);
        let huge = "word ".repeat(MAX_BODY / 5 + 1);
        assert_eq!(
            render(&letter(&from, &to, &huge)),
            Err(PrintError::BodyTooLong(huge.len()))
        );
        let many = "line\n".repeat(2_000);
        assert!(matches!(
            render(&letter(&from, &to, &many)),
            Err(PrintError::TooManyPages(n)) if n > MAX_PAGES
        ));
    }

    /// Runs one of poppler's tools (Debian's poppler-utils, which
    /// `scripts/test` installs) on `pdf`.
    fn poppler(tool: &str, args: &[&str], pdf: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("letter.pdf");
        std::fs::write(&path, pdf).unwrap();
        let out = std::process::Command::new(tool)
            .args(args)
            .arg(&path)
            // pdftotext writes to standard output when told `-`.
            .args((tool == "pdftotext").then_some("-"))
            .output()
            .unwrap_or_else(|e| panic!("{tool} (poppler-utils) must be installed: {e}"));
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A field of pdfinfo's answer (`Page size`), its value trimmed.
    fn info_field(info: &str, name: &str) -> String {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {info}"))
    }

    /// Each word pdftotext finds with its box (`-bbox`), in points from
    /// the top left.
    fn words(pdf: &[u8]) -> Vec<(String, f32, f32, u32)> {
        let html = poppler("pdftotext", &["-bbox"], pdf);
        let mut out = Vec::new();
        let mut page = 0;
        for line in html.lines().map(str::trim) {
            if line.starts_with("<page ") {
                page += 1;
            }
            let Some(rest) = line.strip_prefix("<word ") else {
                continue;
            };
            let attr = |k: &str| -> f32 {
                let at = rest.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                rest[at..].split('"').next().unwrap().parse().unwrap()
            };
            let word = rest
                .split('>')
                .nth(1)
                .unwrap()
                .trim_end_matches("</word")
                .to_string();
            out.push((word, attr("xMin"), attr("yMin"), page));
        }
        out
    }

    #[test]
    fn poppler_reads_the_address_in_the_window_and_the_message_on_a4() {
        let (from, to) = (letterhead(), address());
        let body = "Dear Jörg Müller,\n\nyour contract for line L1 ends on 31 March. Nothing changes before then.\n\nKind regards";
        let printed = render(&letter(&from, &to, body)).unwrap();

        let info = poppler("pdfinfo", &[], &printed.pdf);
        assert_eq!(info_field(&info, "Page size"), "595.28 x 841.89 pts (A4)");
        assert_eq!(info_field(&info, "Pages"), "1");

        let text = poppler("pdftotext", &["-layout"], &printed.pdf);
        for want in [
            "Jörg Müller",
            "Hauptstraße 5",
            "c/o Ærøskøbing Café",
            "10115 Berlin",
            "Example ISP · 1 Fibre Street · EC1A 1BB London",
            "Your contract ends",
            "your contract for line L1 ends on 31 March",
            "Reference: 01a20000-0000-7000-8000-000000000001",
            "Date: 2026-03-22",
            "Page 1 of 1",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // Abroad (from GB to DE): the country line.
        assert!(text.lines().any(|l| l.trim() == "DE"), "{text}");

        // The address sits in the window: 20–105 mm from the left, the
        // address zone 62.7–90 mm from the top.
        let w = words(&printed.pdf);
        let at = |word: &str| {
            w.iter()
                .find(|x| x.0 == word)
                .unwrap_or_else(|| panic!("{word} in {w:?}"))
        };
        for word in ["Jörg", "Hauptstraße", "10115", "Berlin"] {
            let (_, x, y, _) = at(word);
            assert!((mm(20.0)..mm(105.0)).contains(x), "{word} at x {x}");
            assert!((mm(62.7)..mm(90.0)).contains(y), "{word} at y {y}");
        }
        // The return line above it, inside the window too (the
        // letterhead says it once more, higher up).
        let in_return_zone = |(word, x, y, _): &(String, f32, f32, u32)| {
            word == "Fibre" && (mm(20.0)..mm(105.0)).contains(x) && (mm(45.0)..mm(50.0)).contains(y)
        };
        assert!(w.iter().any(in_return_zone), "{w:?}");
    }

    #[test]
    fn poppler_reads_every_page_of_a_long_letter() {
        let (from, to) = (letterhead(), address());
        let body: String = (1..=120)
            .map(|n| format!("Paragraph {n} of the terms.\n"))
            .collect();
        let printed = render(&letter(&from, &to, &body)).unwrap();
        assert!(printed.pages >= 3, "{}", printed.pages);
        let info = poppler("pdfinfo", &[], &printed.pdf);
        assert_eq!(info_field(&info, "Pages"), printed.pages.to_string());
        let text = poppler("pdftotext", &["-layout"], &printed.pdf);
        for n in [1, 60, 120] {
            assert!(
                text.contains(&format!("Paragraph {n} of the terms.")),
                "{n}"
            );
        }
        let last = format!("Page {0} of {0}", printed.pages);
        assert!(text.contains(&last), "{last}");
        // Every paragraph once, in order, nothing lost at a page break.
        let seen: Vec<u32> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Paragraph "))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        assert_eq!(seen, (1..=120).collect::<Vec<_>>());
    }

    #[test]
    fn wrapping_keeps_paragraphs_and_breaks_what_is_too_long() {
        let m = Metrics::new(REGULAR).unwrap();
        let width = mm(40.0);
        let lines = m.wrap(
            "one two three four five six seven eight nine ten\n\nx",
            10.0,
            width,
        );
        assert!(lines.len() > 3, "{lines:?}");
        assert!(
            lines.iter().all(|l| m.width(l, 10.0) <= width + 0.01),
            "{lines:?}"
        );
        assert_eq!(lines.last().map(String::as_str), Some("x"));
        assert!(lines.contains(&String::new()), "the blank line is kept");
        // A word wider than the line is broken, nothing lost.
        let long = "x".repeat(200);
        let broken = m.wrap(&long, 10.0, width);
        assert!(broken.len() > 1);
        assert_eq!(broken.concat(), long);
        // Control characters never reach the page.
        assert_eq!(printable("a\tb\r\nc\u{7}"), "a b\nc ");
    }
}
