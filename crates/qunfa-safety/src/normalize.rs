//! The normaliser: the text the gates match on, with a map back to the original.
//!
//! Spammers write `敏*感 词`, `ｖｘ`, `薇信`, `微微信信`, `аss` (Cyrillic а) or `①③⑧`
//! to slip past a word list. Every text — and every word-list entry — is turned
//! into one canonical form before matching, character by character:
//!
//! 1. NFKC (full-width and half-width forms, circled and styled digits,
//!    compatibility ideographs, Kangxi radicals), then lower case, then Latin,
//!    Greek and Cyrillic letters lose their diacritics;
//! 2. traditional → simplified Chinese (OpenCC's character table, `data/t2s.txt`);
//! 3. homoglyphs: Cyrillic and Greek letters that look Latin become Latin;
//! 4. number styles: Chinese numerals (一, 壹, 〇) become ASCII digits;
//! 5. everything that is not a letter or a digit (spaces, punctuation, symbols,
//!    emoji, zero-width and other format characters) is dropped, and the next
//!    kept character remembers that a gap preceded it;
//! 6. a run of the same character, gaps included, becomes one character that
//!    remembers the length of the run.
//!
//! The result is a `String` (what the automaton scans) plus, for each of its
//! characters, the byte span of the original text it came from, its run length
//! and its gap flags. Word-list entries go through the same steps
//! (`normalize_entry`), keeping the run lengths they need, so `谢谢` still needs
//! two 谢 and `ass` needs two s, while `ssss` matches both.
//!
//! Steps 1–4 depend on the character alone, so they are computed once for the
//! first 196,608 code points into a table (`Table`): the hot loop is one lookup,
//! one comparison with the previous character and a push.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use unicode_normalization::UnicodeNormalization;

/// What the normaliser knows about one character of the normalised text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CharInfo {
    /// Byte offset of the first original character this one came from.
    pub start: u32,
    /// Byte offset just after the last original character it came from.
    pub end: u32,
    /// How many equal characters (gaps allowed) were collapsed into this one.
    pub run: u16,
    /// Something was dropped (a space, a symbol…) just before this character.
    pub gap_before: bool,
    /// Something was dropped between two characters of the run.
    pub gap_inside: bool,
    /// A digit (of the run) was written as a Chinese numeral (一, 壹, 〇):
    /// it is part of Chinese text, not of a Latin word, for word boundaries.
    pub hanzi: bool,
}

/// A normalised text. Reused between scans to avoid allocating.
#[derive(Clone, Debug, Default)]
pub struct Normalized {
    text: String,
    /// Indexed by byte offset into `text`; meaningful at character starts only.
    info: Vec<CharInfo>,
    /// Byte offset in `text` of the last character pushed (for run collapsing).
    last: usize,
    /// The last character pushed; `'\0'` (never pushed: it is dropped) before the first.
    last_char: char,
}

impl Normalized {
    pub fn new() -> Normalized {
        Normalized::default()
    }

    /// The normalised text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The information of the character that starts at `byte` in `text()`.
    ///
    /// # Panics
    /// When `byte` is not below `text().len()`.
    pub fn info(&self, byte: usize) -> CharInfo {
        self.info[byte]
    }

    /// The span of the original text that the normalised bytes `start..end` come
    /// from (`start` and `end` on character boundaries, `start < end`).
    pub fn original_span(&self, start: usize, end: usize) -> (usize, usize) {
        let last = self.text[..end].char_indices().next_back().map_or(start, |(i, _)| i);
        (self.info[start].start as usize, self.info[last].end as usize)
    }

    /// Number of characters in the normalised text (after collapsing runs).
    pub fn char_count(&self) -> usize {
        self.text.chars().count()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.last = 0;
        self.last_char = '\0';
    }

    /// Makes room in `info` for a text that grew beyond the original's length
    /// (expansions such as `⑩` → `10`, rare).
    #[cold]
    fn grow_info(&mut self) {
        self.info.resize(self.text.len() + 16, CharInfo::default());
    }

    /// Appends `c`, or lengthens the run of the last character; true when
    /// `c` was appended.
    #[inline]
    fn push(&mut self, c: char, start: u32, end: u32, gap: bool, hanzi: bool) -> bool {
        if self.last_char == c {
            let info = &mut self.info[self.last];
            info.run = info.run.saturating_add(1);
            info.end = end;
            info.gap_inside |= gap;
            info.hanzi |= hanzi;
            return false;
        }
        let at = self.text.len();
        self.text.push(c);
        if self.info.len() < self.text.len() {
            self.grow_info();
        }
        self.info[at] = CharInfo { start, end, run: 1, gap_before: gap, gap_inside: false, hanzi };
        self.last = at;
        self.last_char = c;
        true
    }
}

/// Normalises `text` into `out` (its previous content is replaced).
pub fn normalize_into(text: &str, out: &mut Normalized) {
    normalize_with(text, out, |_| {});
}

/// Normalises `text` into `out`, calling `on_char` with each character as it
/// is appended to `out.text()` (not for characters that lengthen a run). The
/// word library steps its automaton here: one pass over the text, and the
/// automaton's memory accesses overlap with the decoding of the next
/// characters.
#[inline]
pub fn normalize_with(text: &str, out: &mut Normalized, mut on_char: impl FnMut(char)) {
    let table = Table::get();
    out.clear();
    out.text.reserve(text.len());
    if out.info.len() < text.len() {
        out.info.resize(text.len(), CharInfo::default());
    }
    let mut gap = false;
    for (at, c) in text.char_indices() {
        let start = at as u32;
        let end = (at + c.len_utf8()) as u32;
        match table.lookup(c) {
            Mapped::Drop => gap = true,
            Mapped::One(m) => {
                // Chinese numerals (一, 壹, 〇) are ideographs; full-width and circled digits are not.
                let hanzi = m.is_ascii_digit() && (c == '〇' || ('\u{3400}'..='\u{9fff}').contains(&c));
                if out.push(m, start, end, gap, hanzi) {
                    on_char(m);
                }
                gap = false;
            }
            Mapped::Many(s) => {
                for m in s.chars() {
                    if out.push(m, start, end, gap, false) {
                        on_char(m);
                    }
                    gap = false;
                }
            }
        }
    }
}

/// Normalises `text` into a new buffer.
pub fn normalize(text: &str) -> Normalized {
    let mut out = Normalized::new();
    normalize_into(text, &mut out);
    out
}

/// A word-list entry in normalised form: the characters to match and, when
/// collapsing runs shortened it, the run length each character needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizedEntry {
    pub text: String,
    /// `None` when every run is 1 (the common case).
    pub runs: Option<Box<[u16]>>,
}

/// Normalises a word-list entry; `None` when nothing matchable is left (an
/// entry made only of symbols or spaces).
pub fn normalize_entry(word: &str) -> Option<NormalizedEntry> {
    let normalized = normalize(word);
    if normalized.text.is_empty() {
        return None;
    }
    let runs: Vec<u16> = normalized.text.char_indices().map(|(i, _)| normalized.info[i].run).collect();
    let runs = runs.iter().any(|&r| r > 1).then(|| runs.into_boxed_slice());
    Some(NormalizedEntry { text: normalized.text, runs })
}

/// Maps one character (steps 1–4) into `out`; pushes nothing when it is dropped.
fn map_char(c: char, t2s: &FxHashMap<char, char>, out: &mut String) {
    for n in std::iter::once(c).nfkc() {
        for lower in n.to_lowercase() {
            if (lower as u32) < 0x0530 {
                // Latin, Greek and Cyrillic: drop diacritics (é → e, ё → е).
                unicode_normalization::char::decompose_canonical(lower, |d| {
                    if !unicode_normalization::char::is_combining_mark(d) {
                        push_mapped(d, t2s, out);
                    }
                });
            } else {
                push_mapped(lower, t2s, out);
            }
        }
    }
}

fn push_mapped(c: char, t2s: &FxHashMap<char, char>, out: &mut String) {
    let c = t2s.get(&c).copied().unwrap_or(c);
    let c = homoglyph(c).unwrap_or(c);
    let c = numeral(c).unwrap_or(c);
    if c.is_alphanumeric() {
        out.push(c);
    }
}

/// Letters of other scripts (lower case, as they arrive here) that look like
/// Latin letters: Cyrillic, Greek, Armenian, phonetic letters and small
/// capitals. Written for this project from the glyph shapes; the link check
/// uses the same table for look-alike domains. Letters of living Latin
/// alphabets (`ø`, `ł`, `ß`) are not here.
pub(crate) fn homoglyph(c: char) -> Option<char> {
    Some(match c {
        // Cyrillic
        'а' => 'a',
        'в' | 'ь' => 'b',
        'с' => 'c',
        'ԁ' => 'd',
        'е' => 'e',
        'ѕ' => 's',
        'һ' | 'н' => 'h',
        'і' => 'i',
        'ј' => 'j',
        'к' => 'k',
        'ӏ' => 'l',
        'м' => 'm',
        'о' => 'o',
        'р' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'т' => 't',
        'ц' => 'u',
        'ѵ' => 'v',
        'ԝ' => 'w',
        'х' => 'x',
        'у' | 'ү' => 'y',
        'з' => '3',
        // Greek
        'α' => 'a',
        'β' => 'b',
        'ε' => 'e',
        'η' => 'n',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'γ' => 'y',
        'ω' => 'w',
        'ϲ' => 'c',
        'ϳ' => 'j',
        // Armenian
        'ա' => 'w',
        'ց' => 'g',
        'հ' => 'h',
        'ո' => 'n',
        'ս' => 'u',
        'օ' => 'o',
        'զ' => 'q',
        // Phonetic letters and small capitals
        'ı' | 'ɩ' | 'ɪ' => 'i',
        'ȷ' => 'j',
        'ɑ' => 'a',
        'ƅ' => 'b',
        'ɡ' => 'g',
        'ʟ' => 'l',
        'ɴ' => 'n',
        'ʀ' => 'r',
        'ʏ' => 'y',
        'ᴄ' => 'c',
        'ᴏ' => 'o',
        'ᴠ' => 'v',
        'ᴡ' => 'w',
        'ᴢ' => 'z',
        _ => return None,
    })
}

/// Chinese numerals, ordinary and financial (大写), as ASCII digits.
fn numeral(c: char) -> Option<char> {
    Some(match c {
        '零' | '〇' => '0',
        '一' | '壹' | '幺' => '1',
        '二' | '贰' | '弍' => '2',
        '三' | '叁' | '弎' => '3',
        '四' | '肆' => '4',
        '五' | '伍' => '5',
        '六' | '陆' => '6',
        '七' | '柒' => '7',
        '八' | '捌' => '8',
        '九' | '玖' => '9',
        _ => return None,
    })
}

/// Code points below this are mapped through the table; others are mapped
/// on the fly (rare: CJK extensions beyond B, emoji, private use).
const TABLE_LEN: u32 = 0x3_0000;
const DROP: u32 = u32::MAX;
const MANY: u32 = 1 << 31;

enum Mapped<'a> {
    Drop,
    One(char),
    Many(&'a str),
}

struct Table {
    /// One bit per code point: set when the character maps to itself. 24 KiB,
    /// so it stays in the L1 cache while the automaton walks its big arrays;
    /// most characters of real text are such characters.
    identity: Box<[u64]>,
    /// Per code point: `DROP`, `MANY | index into many`, or the mapped char.
    map: Box<[u32]>,
    many: Vec<Box<str>>,
    t2s: FxHashMap<char, char>,
}

impl Table {
    fn get() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(Table::build)
    }

    fn build() -> Table {
        let t2s = parse_t2s(include_str!("../data/t2s.txt"));
        let mut map = vec![DROP; TABLE_LEN as usize].into_boxed_slice();
        let mut many = Vec::new();
        let mut buffer = String::new();
        for code in 0..TABLE_LEN {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            buffer.clear();
            map_char(c, &t2s, &mut buffer);
            let mut chars = buffer.chars();
            map[code as usize] = match (chars.next(), chars.next()) {
                (None, _) => DROP,
                (Some(one), None) => one as u32,
                (Some(_), Some(_)) => {
                    many.push(Box::from(buffer.as_str()));
                    MANY | (many.len() as u32 - 1)
                }
            };
        }
        let mut identity = vec![0u64; TABLE_LEN as usize / 64].into_boxed_slice();
        for (code, &entry) in map.iter().enumerate() {
            if entry == code as u32 {
                identity[code / 64] |= 1 << (code % 64);
            }
        }
        Table { identity, map, many, t2s }
    }

    #[inline]
    fn lookup(&self, c: char) -> Mapped<'_> {
        let code = c as usize;
        if let Some(&bits) = self.identity.get(code / 64) {
            if bits & (1 << (code % 64)) != 0 {
                return Mapped::One(c);
            }
        }
        let Some(&entry) = self.map.get(code) else {
            return self.lookup_slow(c);
        };
        if entry == DROP {
            Mapped::Drop
        } else if entry & MANY != 0 {
            Mapped::Many(&self.many[(entry & !MANY) as usize])
        } else {
            // The table only holds chars it made from chars.
            Mapped::One(char::from_u32(entry).unwrap_or(c))
        }
    }

    #[cold]
    fn lookup_slow(&self, c: char) -> Mapped<'_> {
        // Beyond the table: emoji and symbols are dropped; letters (CJK
        // extensions, historic scripts) are kept as they are, which is what the
        // full mapping does to them too.
        if c.is_alphanumeric() {
            let mut buffer = String::new();
            map_char(c, &self.t2s, &mut buffer);
            let mut chars = buffer.chars();
            match (chars.next(), chars.next()) {
                (Some(one), None) => Mapped::One(one),
                (None, _) => Mapped::Drop,
                // Never seen in practice; keeping the character is safe.
                (Some(_), Some(_)) => Mapped::One(c),
            }
        } else {
            Mapped::Drop
        }
    }
}

fn parse_t2s(data: &str) -> FxHashMap<char, char> {
    data.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut chars = line.chars();
            Some((chars.next()?, chars.next()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(normalize(input).text(), expected, "normalising {input:?}");
    }

    #[test]
    fn each_step() {
        let cases = [
            // full width, case
            ("ＶＸ：ａｂｃ１２３", "vx:abc123".replace(':', "").as_str().to_owned()),
            ("WeChat", "wechat".to_owned()),
            // traditional → simplified
            ("微信號碼", "微信号码".to_owned()),
            ("發財", "发财".to_owned()),
            // symbols, spaces, zero-width, emoji between characters
            ("敏*感 词", "敏感词".to_owned()),
            ("刷\u{200b}单", "刷单".to_owned()),
            ("刷😀单", "刷单".to_owned()),
            ("刷\u{fe0f}单", "刷单".to_owned()),
            // homoglyphs
            ("\u{430}ss", "as".to_owned()),
            ("р\u{430}ypal", "paypal".to_owned()),
            ("\u{430}bc", "abc".to_owned()),
            // number styles
            ("①③⑧", "138".to_owned()),
            ("壹贰叁", "123".to_owned()),
            ("一三八", "138".to_owned()),
            ("⑩", "10".to_owned()),
            // diacritics
            ("café", "cafe".to_owned()),
            // repeats collapse (runs are kept in the info)
            ("微微信信", "微信".to_owned()),
            ("敏 敏 感", "敏感".to_owned()),
        ];
        for (input, expected) in cases {
            check(input, &expected);
        }
    }

    #[test]
    fn offsets_map_back_to_the_original() {
        let text = "加 Ｖ*信：刷單";
        let n = normalize(text);
        assert_eq!(n.text(), "加v信刷单");
        let start = n.text().find("刷单").unwrap();
        let (s, e) = n.original_span(start, start + "刷单".len());
        assert_eq!(&text[s..e], "刷單");
        let v = n.text().find('v').unwrap();
        let (s, e) = n.original_span(v, v + 1);
        assert_eq!(&text[s..e], "Ｖ");
        assert!(n.info(v).gap_before);
    }

    #[test]
    fn runs_and_gaps() {
        let n = normalize("a s s");
        assert_eq!(n.text(), "as");
        let s = n.info(1);
        assert_eq!((s.run, s.gap_before, s.gap_inside), (2, true, true));
        let n = normalize("glass");
        assert_eq!(n.text(), "glas");
        assert_eq!(n.info(3).run, 2);
        assert!(!n.info(3).gap_inside);
    }

    #[test]
    fn entries_keep_their_runs() {
        let e = normalize_entry("谢谢").unwrap();
        assert_eq!(e.text, "谢");
        assert_eq!(e.runs.as_deref(), Some(&[2u16][..]));
        let e = normalize_entry("刷单").unwrap();
        assert_eq!(e.runs, None);
        assert_eq!(normalize_entry(" ** "), None);
    }

    #[test]
    fn odd_input_does_not_panic() {
        for text in ["", "\u{0}", "𠀀𠀁", "🏳️‍🌈", "\u{10ffff}", "ﷺ", "㈱", "\u{fffd}"] {
            let n = normalize(text);
            for (i, _) in n.text().char_indices() {
                let (s, e) = n.original_span(i, i + n.text()[i..].chars().next().unwrap().len_utf8());
                assert!(s < e && e <= text.len());
            }
        }
    }
}
