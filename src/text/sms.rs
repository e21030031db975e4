//! SMS encoding and segments (3GPP TS 23.038). Text that fits the GSM 7-bit
//! default alphabet is sent as GSM-7: 160 septets in one message, 153 per
//! part when concatenated; characters of the extension table (`€ [ ] { }
//! \ ^ ~ |` and form feed) take two septets and are never split across
//! parts. Anything else makes the whole message UCS-2: 70 UTF-16 units, 67
//! per part, a surrogate pair never split. Segments are what providers bill.

/// The GSM 7-bit default alphabet (one septet each).
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table (an escape septet and one more: two septets each).
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// How a text goes out as SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    /// Parts billed.
    pub count: usize,
}

fn septets(c: char) -> Option<usize> {
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Packs units into parts of `per_part` without splitting one character's
/// units (`sizes`), returning how many parts.
fn parts(sizes: impl Iterator<Item = usize>, single: usize, per_part: usize) -> (usize, usize) {
    let sizes: Vec<usize> = sizes.collect();
    let total: usize = sizes.iter().sum();
    if total <= single {
        return (total, usize::from(total > 0).max(1));
    }
    let (mut count, mut used) = (1, 0);
    for s in sizes {
        if used + s > per_part {
            count += 1;
            used = 0;
        }
        used += s;
    }
    (total, count)
}

/// The encoding, size and segment count of `text`.
pub fn segments(text: &str) -> Segments {
    let gsm: Option<Vec<usize>> = text.chars().map(septets).collect();
    match gsm {
        Some(sizes) => {
            let (units, count) = parts(sizes.into_iter(), 160, 153);
            Segments {
                encoding: Encoding::Gsm7,
                units,
                count,
            }
        }
        None => {
            let (units, count) = parts(text.chars().map(char::len_utf16), 70, 67);
            Segments {
                encoding: Encoding::Ucs2,
                units,
                count,
            }
        }
    }
}

/// `text` cut to fit in `max` segments, ending in `...` when cut (three
/// dots, not `…`, which is not GSM-7 and would turn the message UCS-2 and
/// cost more parts). Whole characters only, at the end of a word when one
/// ends within 20 characters of the limit.
pub fn fit(text: &str, max: usize) -> (String, Segments) {
    let max = max.max(1);
    let whole = segments(text);
    if whole.count <= max {
        return (text.to_string(), whole);
    }
    let chars: Vec<char> = text.chars().collect();
    // The longest prefix that fits with the mark; segments grow with the
    // prefix, so search for the boundary.
    let (mut lo, mut hi) = (0, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let cut: String = chars[..mid].iter().collect();
        if segments(&format!("{}...", cut.trim_end())).count <= max {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    // End on a word if one ends close by, rather than mid-word.
    let word_end = chars[..lo]
        .iter()
        .rposition(|c| c.is_whitespace())
        .filter(|&i| lo - i <= 20);
    let cut: String = chars[..word_end.unwrap_or(lo)].iter().collect();
    let out = format!("{}...", cut.trim_end());
    let s = segments(&out);
    (out, s)
}

impl std::fmt::Display for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let enc = match self.encoding {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        };
        let s = if self.count == 1 { "" } else { "s" };
        write!(f, "{} segment{s} ({enc}, {} units)", self.count, self.units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str) -> (Encoding, usize, usize) {
        let s = segments(text);
        (s.encoding, s.units, s.count)
    }

    #[test]
    fn the_alphabet_tables_are_complete() {
        assert_eq!(BASIC.chars().count(), 127, "128 codes less the escape");
        assert_eq!(EXTENSION.chars().count(), 10);
    }

    #[test]
    fn table() {
        use Encoding::*;
        let a = |n: usize| "a".repeat(n);
        let euro = |n: usize| "€".repeat(n);
        let l = |n: usize| "ł".repeat(n);
        let cases: Vec<(&str, String, (Encoding, usize, usize))> = vec![
            ("empty", String::new(), (Gsm7, 0, 1)),
            ("160 plain: one", a(160), (Gsm7, 160, 1)),
            ("161 plain: two", a(161), (Gsm7, 161, 2)),
            ("306 plain: two parts of 153", a(306), (Gsm7, 306, 2)),
            ("307 plain: three", a(307), (Gsm7, 307, 3)),
            (
                "GSM specials are one septet",
                "Ünicodé? No: Ñ, ß, £, Δ, é!".into(),
                (Gsm7, 27, 1),
            ),
            ("80 € fill one message", euro(80), (Gsm7, 160, 1)),
            (
                "81 €: 76 fit the first part, never split",
                euro(81),
                (Gsm7, 162, 2),
            ),
            ("brackets count double", "[x]{y}".into(), (Gsm7, 10, 1)),
            ("70 non-GSM: one UCS-2", l(70), (Ucs2, 70, 1)),
            ("71 non-GSM: two", l(71), (Ucs2, 71, 2)),
            (
                "one emoji turns it all UCS-2",
                format!("{} 🙂", a(66)),
                (Ucs2, 69, 1),
            ),
            (
                "surrogate pairs are never split: 33 a part",
                "🙂".repeat(67),
                (Ucs2, 134, 3),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(seg(&text), want, "{name}");
        }
    }

    #[test]
    fn fitting_cuts_to_the_maximum_and_marks_the_cut() {
        let short = "Your line L1 is down.";
        assert_eq!(fit(short, 1).0, short);
        // 400 plain characters, at most 2 parts of 153: 306 septets.
        let long = "word ".repeat(80);
        let (text, s) = fit(&long, 2);
        assert_eq!((s.encoding, s.count), (Encoding::Gsm7, 2));
        assert!(text.ends_with("word..."), "{text}");
        assert_eq!(s.units, text.chars().count());
        assert!(s.units > 300 && s.units <= 306, "{}", s.units);
        // One more character would not fit.
        let (one_part, s) = fit(&"a".repeat(500), 1);
        assert_eq!((one_part.len(), s.count), (160, 1));
        // UCS-2 stays UCS-2 and keeps surrogate pairs whole.
        let (emoji, s) = fit(&"🙂".repeat(100), 1);
        assert_eq!((s.encoding, s.count), (Encoding::Ucs2, 1));
        assert_eq!(emoji, format!("{}...", "🙂".repeat(33)));
        // Extension characters count double in the fit too.
        let (euros, s) = fit(&"€".repeat(200), 1);
        assert_eq!((euros, s.units), (format!("{}...", "€".repeat(78)), 159));
    }
}
