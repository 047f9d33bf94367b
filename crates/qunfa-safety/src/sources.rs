//! Where a word library comes from: the lists shipped with qunfa, a folder of
//! word files the operator configures, the lint's decisions and words added
//! through the API. The callers read the files; this module turns their bytes
//! into a `Lexicon` and a domain block list.
//!
//! A folder may hold a `lexicon.toml` manifest (see `lexicon/lexicon.toml`)
//! naming each category's file, severity and descriptions, the allowlist and
//! domain lists. Without one, every `*.txt` file is a category named after the
//! file with severity `block`, except files of domain names (most lines look
//! like `example.com`), which become the link block list. A `lint.tsv` in the
//! folder (written by `qunfa safety lint --apply`) drops or re-grades words.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::lexicon::{Lexicon, LexiconBuilder, LexiconError, Override, Severity};
use crate::links::DomainList;

/// The default lists, written for qunfa.
pub const DEFAULT_FILES: &[(&str, &[u8])] = &[
    ("lexicon.toml", include_bytes!("../lexicon/lexicon.toml")),
    ("absolute.txt", include_bytes!("../lexicon/absolute.txt")),
    ("inducement.txt", include_bytes!("../lexicon/inducement.txt")),
    ("fraud.txt", include_bytes!("../lexicon/fraud.txt")),
    ("allow.txt", include_bytes!("../lexicon/allow.txt")),
];

/// A lint line about a whole category starts with this (`category:名称<TAB>review`).
pub const CATEGORY_PREFIX: &str = "category:";

/// The name of the lint's decisions in a word folder.
pub const LINT_FILE: &str = "lint.tsv";

/// Sample messages in a word folder (one per line), for the automaton's
/// layout (see `LexiconBuilder::layout_sample`); written by `lint --apply`.
pub const LAYOUT_FILE: &str = "layout.txt";

/// Most sample lines used for the layout.
pub const LAYOUT_LINES: usize = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Lexicon(#[from] LexiconError),
    #[error("{file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error("{file}:{line}: {reason}")]
    Lint { file: String, line: usize, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    allow: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    categories: BTreeMap<String, ManifestCategory>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestCategory {
    file: String,
    severity: String,
    #[serde(default)]
    en: String,
    #[serde(default)]
    zh: String,
}

/// A word added through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraWord {
    pub category: String,
    pub word: String,
    pub severity: Severity,
}

/// Everything a library is built from.
#[derive(Default)]
pub struct Sources<'a> {
    /// Include the default lists.
    pub defaults: bool,
    /// Files of the operator's folder: (file name, bytes).
    pub folder: Vec<(String, Vec<u8>)>,
    /// Words and allow phrases added through the API.
    pub extra_words: &'a [ExtraWord],
    pub extra_allow: &'a [String],
}

/// A built library with its domain block list.
pub struct Built {
    pub lexicon: Lexicon,
    pub domains: DomainList,
}

/// Builds the library from its sources.
///
/// # Errors
/// A broken manifest, word file or lint file, or an empty library.
pub fn build(sources: &Sources<'_>) -> Result<Built, SourceError> {
    let mut builder = LexiconBuilder::new();
    let mut domain_text = String::new();
    if sources.defaults {
        let files: Vec<(String, Vec<u8>)> =
            DEFAULT_FILES.iter().map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec())).collect();
        add_folder(&mut builder, &files, &mut domain_text, "default")?;
    }
    if !sources.folder.is_empty() {
        add_folder(&mut builder, &sources.folder, &mut domain_text, "")?;
    }
    for extra in sources.extra_words {
        // A category the files declared keeps its severity and descriptions.
        if !builder.has_category(&extra.category) {
            builder.category(&extra.category, Severity::Block, "", "");
        }
    }
    // Categories declared by files keep their descriptions; an API word names
    // its own severity.
    for extra in sources.extra_words {
        let line = format!("{}\t{}", extra.word, extra.severity);
        builder.add_words(&extra.category, "api", line.as_bytes())?;
    }
    if !sources.extra_allow.is_empty() {
        builder.add_allow("api", sources.extra_allow.join("\n").as_bytes())?;
    }
    // The automaton's layout follows ordinary messages: the operator's
    // sample when there is one, else the shipped labelled examples.
    let mut sample: Vec<String> = Vec::new();
    if let Some((_, bytes)) = sources.folder.iter().find(|(n, _)| n == LAYOUT_FILE) {
        let text = String::from_utf8_lossy(bytes);
        sample.extend(text.lines().filter(|l| !l.trim().is_empty()).take(LAYOUT_LINES).map(str::to_owned));
    }
    if sample.is_empty() {
        if let Ok(examples) = crate::model::parse_jsonl(crate::check::DEFAULT_EXAMPLES) {
            sample.extend(examples.into_iter().map(|e| e.text));
        }
    }
    builder.layout_sample(sample);
    let lexicon = builder.build()?;
    Ok(Built { lexicon, domains: DomainList::parse(&domain_text) })
}

fn add_folder(
    builder: &mut LexiconBuilder,
    files: &[(String, Vec<u8>)],
    domain_text: &mut String,
    label: &str,
) -> Result<(), SourceError> {
    let named = |name: &str| -> String {
        if label.is_empty() {
            name.to_owned()
        } else {
            format!("{label}/{name}")
        }
    };
    let file = |name: &str| -> Result<&[u8], SourceError> {
        files.iter().find(|(n, _)| n == name).map(|(_, bytes)| bytes.as_slice()).ok_or_else(|| SourceError::Manifest {
            file: named("lexicon.toml"),
            reason: format!("names {name:?}, which is not in the folder"),
        })
    };
    let utf8 = |name: &str, bytes: &[u8]| -> Result<String, SourceError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            SourceError::Lexicon(LexiconError::Encoding { file: named(name), offset: e.utf8_error().valid_up_to() })
        })
    };
    if let Some((_, manifest)) = files.iter().find(|(n, _)| n == "lexicon.toml") {
        let text = utf8("lexicon.toml", manifest)?;
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|e| SourceError::Manifest { file: named("lexicon.toml"), reason: e.to_string() })?;
        for (id, category) in &manifest.categories {
            let severity = Severity::parse(&category.severity).ok_or_else(|| SourceError::Manifest {
                file: named("lexicon.toml"),
                reason: format!("category {id}: unknown severity {:?}", category.severity),
            })?;
            builder.category(id, severity, &category.en, &category.zh);
            builder.add_words(id, &named(&category.file), file(&category.file)?)?;
        }
        if let Some(allow) = &manifest.allow {
            builder.add_allow(&named(allow), file(allow)?)?;
        }
        for domains in &manifest.domains {
            domain_text.push_str(&utf8(domains, file(domains)?)?);
            domain_text.push('\n');
        }
    } else {
        for (name, bytes) in files {
            let Some(stem) = name.strip_suffix(".txt").filter(|_| name != LAYOUT_FILE) else {
                continue;
            };
            if stem == "allow" {
                builder.add_allow(&named(name), bytes)?;
                continue;
            }
            let text = utf8(name, bytes)?;
            if looks_like_domains(&text) {
                domain_text.push_str(&text);
                domain_text.push('\n');
                continue;
            }
            builder.category(stem, Severity::Block, "", "");
            builder.add_words(stem, &named(name), bytes)?;
        }
    }
    if let Some((_, lint)) = files.iter().find(|(n, _)| n == LINT_FILE) {
        let text = utf8(LINT_FILE, lint)?;
        for (word, decision) in parse_lint(&named(LINT_FILE), &text)? {
            match (word.strip_prefix(CATEGORY_PREFIX), decision) {
                (Some(category), Override::Severity(severity)) => builder.override_category(category, severity),
                (Some(_), Override::Drop) => {
                    return Err(SourceError::Lint {
                        file: named(LINT_FILE),
                        line: 0,
                        reason: format!("{word}: a category is re-graded, not dropped"),
                    })
                }
                (None, decision) => builder.override_word(&word, decision),
            }
        }
    }
    Ok(())
}

/// Most non-blank lines are ASCII host names with a dot.
fn looks_like_domains(text: &str) -> bool {
    let (mut lines, mut domains) = (0usize, 0usize);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        lines += 1;
        if line.contains('.') && line.chars().all(|c| c.is_ascii_alphanumeric() || ".-_/:".contains(c)) {
            domains += 1;
        }
    }
    lines > 0 && domains * 10 >= lines * 9
}

/// Parses a lint file: `word<TAB>drop|review|derank|block[<TAB>reason]`.
///
/// # Errors
/// A line without a known decision.
pub fn parse_lint(file: &str, text: &str) -> Result<Vec<(String, Override)>, SourceError> {
    let mut decisions = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split('\t');
        let word = fields.next().unwrap_or_default();
        let decision = fields.next().unwrap_or_default().trim();
        let decision = match decision {
            "drop" => Override::Drop,
            other => Override::Severity(Severity::parse(other).ok_or_else(|| SourceError::Lint {
                file: file.to_owned(),
                line: i + 1,
                reason: format!("unknown decision {other:?}: use drop, review, derank or block"),
            })?),
        };
        if word.is_empty() {
            return Err(SourceError::Lint { file: file.to_owned(), line: i + 1, reason: "no word".into() });
        }
        decisions.push((word.to_owned(), decision));
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_build() {
        let built = build(&Sources { defaults: true, ..Sources::default() }).unwrap();
        let ids: Vec<&str> = built.lexicon.categories().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["absolute", "fraud", "inducement"]);
        assert!(built.lexicon.stats().allow > 50);
        assert!(built.lexicon.entries().len() > 200);
    }

    #[test]
    fn a_plain_folder_with_domains_and_lint() {
        let folder = vec![
            ("色情.txt".to_owned(), "口交\n出\n".as_bytes().to_vec()),
            ("网址.txt".to_owned(), b"bad-site.com\nworse.cn\n".to_vec()),
            (LINT_FILE.to_owned(), "出\tdrop\tsingle character\n".as_bytes().to_vec()),
            ("README.md".to_owned(), b"ignored".to_vec()),
        ];
        let built = build(&Sources { folder, ..Sources::default() }).unwrap();
        assert_eq!(built.lexicon.entries().len(), 1);
        assert_eq!(built.domains.len(), 2);
        assert!(built.domains.matches("www.bad-site.com").is_some());
    }

    #[test]
    fn broken_sources_are_clear_errors() {
        let err = |folder: Vec<(&str, &[u8])>| {
            let folder = folder.into_iter().map(|(n, b)| (n.to_owned(), b.to_vec())).collect();
            build(&Sources { folder, ..Sources::default() }).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(err(vec![("a.txt", b"\xff")]), "a.txt is not valid UTF-8 (first bad byte at offset 0)");
        assert_eq!(err(vec![("a.txt", b"\n\n")]), "the word library is empty");
        assert!(err(vec![("lexicon.toml", b"[categories.x]\nfile='x.txt'\nseverity='block'")])
            .contains("names \"x.txt\", which is not in the folder"));
        assert!(err(vec![("a.txt", b"w"), (LINT_FILE, b"w\tmaybe")]).contains("lint.tsv:1: unknown decision"));
    }
}
