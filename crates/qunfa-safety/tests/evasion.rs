//! The evasion suite: data-driven cases (`data/evasion.tsv`, one per line:
//! class, text, word, expected category or `none`, source) run through the
//! word library. `default` rows use the lists shipped with qunfa; `external`
//! rows name a word of the big third-party lists, added here as a category of
//! its own. A second suite generates every variant class for a sample of the
//! shared lexicon's words (when `../shared/data` is there).

use qunfa_safety::{
    lexicon::{LexiconBuilder, Scratch, Severity},
    normalize::normalize,
    sources::{self, Sources, DEFAULT_FILES},
};

const CASES: &str = include_str!("../data/evasion.tsv");

struct Case<'a> {
    line: usize,
    class: &'a str,
    text: &'a str,
    word: &'a str,
    expect: &'a str,
    source: &'a str,
}

fn cases() -> Vec<Case<'static>> {
    CASES
        .lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "line {}: five columns", i + 1);
            Case { line: i + 1, class: f[0], text: f[1], word: f[2], expect: f[3], source: f[4] }
        })
        .collect()
}

#[test]
fn the_suite_passes() {
    let cases = cases();
    assert!(cases.len() >= 250, "{} cases", cases.len());
    // The shipped lists plus the external words the suite names.
    let mut builder = LexiconBuilder::new();
    let files: Vec<(String, Vec<u8>)> = DEFAULT_FILES.iter().map(|(n, b)| ((*n).to_owned(), b.to_vec())).collect();
    // The shipped files by hand, to add the external category next to them.
    for (name, bytes) in &files {
        let Some(category) = name.strip_suffix(".txt") else { continue };
        if category == "allow" {
            builder.add_allow(name, bytes).unwrap();
            continue;
        }
        builder.category(category, Severity::Block, "", "");
        builder.add_words(category, name, bytes).unwrap();
    }
    builder.category("external", Severity::Block, "", "");
    let external: Vec<&str> = cases.iter().filter(|c| c.source == "external").map(|c| c.word).collect();
    builder.add_words("external", "suite", external.join("\n").as_bytes()).unwrap();
    let lexicon = builder.build().unwrap();

    let mut scratch = Scratch::new();
    let mut failures = Vec::new();
    let mut by_class: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for c in &cases {
        let normalized = normalize(c.text);
        lexicon.scan(&normalized, &mut scratch);
        let found = scratch.hits().iter().any(|h| lexicon.entry(h.entry).word == c.word);
        let ok = if c.expect == "none" { !found } else { found };
        let tally = by_class.entry(c.class).or_default();
        tally.0 += 1;
        if ok {
            tally.1 += 1;
        } else {
            failures.push(format!(
                "line {} [{}] {:?}: {} {:?} (normalised {:?})",
                c.line,
                c.class,
                c.text,
                if c.expect == "none" { "found" } else { "missed" },
                c.word,
                normalized.text()
            ));
        }
    }
    for (class, (n, ok)) in &by_class {
        println!("{class:<14} {ok}/{n}");
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Evasion variants a spammer applies to a word.
pub fn variants(word: &str) -> Vec<(&'static str, String)> {
    let chars: Vec<char> = word.chars().collect();
    let join = |sep: &str| chars.iter().map(char::to_string).collect::<Vec<_>>().join(sep);
    let full_width: String = chars
        .iter()
        .map(|&c| match c {
            '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xff01).unwrap_or(c),
            _ => c,
        })
        .collect();
    let repeated: String = chars.iter().flat_map(|&c| [c, c]).collect();
    // Simplified → traditional with the reverse of the normaliser's table.
    let to_traditional: std::collections::HashMap<char, char> = include_str!("../data/t2s.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut c = l.chars();
            let (t, s) = (c.next()?, c.next()?);
            Some((s, t))
        })
        .collect();
    let traditional: String = chars.iter().map(|c| to_traditional.get(c).copied().unwrap_or(*c)).collect();
    let homoglyphs: String = chars
        .iter()
        .map(|&c| match c {
            'a' => 'а',
            'e' => 'е',
            'o' => 'о',
            'p' => 'р',
            'c' => 'с',
            'x' => 'х',
            _ => c,
        })
        .collect();
    vec![
        ("symbols", join("*")),
        ("spaces", join(" ")),
        ("zero_width", join("\u{200b}")),
        ("emoji", join("😀")),
        ("full_width", full_width),
        ("repeats", repeated),
        ("upper", word.to_uppercase()),
        ("traditional", traditional),
        ("homoglyph", homoglyphs),
        ("mixed", format!("【{}】", join("·"))),
    ]
}

#[test]
fn every_variant_of_a_kept_shared_word_is_caught() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/lexicon");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("skipped: {} is not there", dir.display());
        return;
    };
    let mut folder = Vec::new();
    for e in entries {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "txt") {
            folder.push((path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()));
        }
    }
    let built = sources::build(&Sources { folder, ..Sources::default() }).unwrap();
    let lexicon = built.lexicon;
    // Every 97th entry of at least two characters, without the conjunctions.
    let sample: Vec<&str> = lexicon
        .entries()
        .iter()
        .map(|e| e.word.as_str())
        .filter(|w| w.chars().count() >= 2 && !w.contains('+') && !w.contains(char::is_whitespace))
        .step_by(97)
        .collect();
    assert!(sample.len() > 400, "{}", sample.len());
    let mut scratch = Scratch::new();
    let mut missed = Vec::new();
    let mut n = 0;
    for word in &sample {
        for (class, text) in variants(word) {
            let text = format!("这是{text}的消息");
            n += 1;
            lexicon.scan(&normalize(&text), &mut scratch);
            if !scratch.hits().iter().any(|h| lexicon.entry(h.entry).word == *word) {
                missed.push(format!("{class}: {text:?} misses {word:?}"));
            }
        }
    }
    println!("{n} variants of {} words", sample.len());
    assert!(missed.is_empty(), "{} of {n} missed:\n{}", missed.len(), missed.join("\n"));
}
