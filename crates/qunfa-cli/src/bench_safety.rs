//! `qunfa bench safety`: the content-safety scanner on real Chinese text.
//!
//! - False positives: the corpus (news, shopping reviews) is benign. Each file
//!   is cut in two halves: the first half is the lint's reference, the second
//!   the test, so no line is both. The share of test lines that get `block`
//!   is reported per category, with the whole lexicon loaded, before and after
//!   the lint — for the word library alone and for the full check.
//! - Evasion: every variant class of a sample of the entries the lint keeps
//!   must still be caught.
//! - Throughput on one thread over the whole corpus, and latency per
//!   2,048-character message, against a plain Aho-Corasick scan of the raw
//!   text with the raw words (daachorse, no normalisation: the limit) and
//!   pyahocorasick (the Python peer) on the same data when it is installed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context};
use daachorse::{CharwiseDoubleArrayAhoCorasickBuilder, MatchKind};
use qunfa_safety::{
    lexicon::{Lexicon, Scratch, Severity},
    lint::{lint, LintOptions},
    normalize::{normalize, Normalized},
    rules::RuleSet,
    sources::{self, Sources, LINT_FILE},
    Action, CheckScratch, Safety, Thresholds,
};

pub struct Options {
    pub lexicon: PathBuf,
    pub corpus: Vec<PathBuf>,
    pub python: Option<PathBuf>,
    pub runs: usize,
    pub lint: LintOptions,
}

pub fn safety(o: &Options) -> anyhow::Result<()> {
    let folder: Vec<(String, Vec<u8>)> = qunfa_server::safety::read_folder(&o.lexicon)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(|(name, _)| name != LINT_FILE)
        .collect();
    let lexicon_lines: usize = folder
        .iter()
        .filter(|(n, _)| n.ends_with(".txt"))
        .map(|(_, b)| b.iter().filter(|&&c| c == b'\n').count())
        .sum();
    let mut files = Vec::new();
    for path in &o.corpus {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        files.push(text);
    }
    if files.is_empty() {
        bail!("no corpus files");
    }
    let mut all: Vec<&str> = Vec::new();
    for text in &files {
        all.extend(text.lines().filter(|l| !l.trim().is_empty()));
    }
    // Reference and test parts: the distinct lines, split by a hash of the
    // line, so no line (nor a copy of it: the reviews repeat some) is in both.
    let mut distinct: Vec<&str> = all.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let (reference, test): (Vec<&str>, Vec<&str>) = distinct.iter().partition(|l| fnv(l).is_multiple_of(2));
    // The stricter split: each file's first half against its second half (news
    // topics drift from day to day, so words unseen in one half turn up in the other).
    let (mut first_halves, mut second_halves): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for text in &files {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let half = lines.len() / 2;
        first_halves.extend(&lines[..half]);
        second_halves.extend(lines[half..].iter().filter(|l| !lines[..half].contains(l)));
    }
    let bytes: usize = all.iter().map(|l| l.len()).sum();

    let before = sources::build(&Sources { folder: folder.clone(), ..Sources::default() })?;
    println!(
        "qunfa bench safety: corpus {:.1} MB ({} lines, {} distinct; reference part {} lines, test part {} lines); lexicon {} lines → {} entries ({} duplicates), {} blocked domains",
        bytes as f64 / 1e6,
        all.len(),
        distinct.len(),
        reference.len(),
        test.len(),
        lexicon_lines,
        before.lexicon.entries().len(),
        before.lexicon.stats().duplicates,
        before.domains.len()
    );

    // The lint, from the reference half only.
    let report = lint(&before.lexicon, reference.iter().copied(), &o.lint);
    // As `qunfa safety lint --apply` leaves the folder: the lint's decisions
    // and a sample of the reference for the automaton's layout.
    let mut folder_after = folder.clone();
    folder_after.push((LINT_FILE.to_owned(), report.to_tsv().into_bytes()));
    let step = (reference.len() / sources::LAYOUT_LINES).max(1);
    let layout: Vec<&str> = reference.iter().step_by(step).take(sources::LAYOUT_LINES).copied().collect();
    folder_after.push((sources::LAYOUT_FILE.to_owned(), (layout.join("\n") + "\n").into_bytes()));
    let after = sources::build(&Sources { folder: folder_after, ..Sources::default() })?;
    let drops = report.proposals.iter().filter(|p| p.decision.is_none()).count();
    let categories: Vec<String> =
        report.categories.iter().map(|c| format!("{} → {}", c.category, c.decision)).collect();
    println!(
        "lint (reference part): {} drop, {} review, categories [{}]; {} entries left at block",
        drops,
        report.proposals.len() - drops,
        categories.join(", "),
        after.lexicon.entries().iter().filter(|e| e.severity == Severity::Block).count()
    );

    // False positives on the test half.
    let fp_before = false_positives(&before.lexicon, &test);
    let fp_after = false_positives(&after.lexicon, &test);
    let full_before = full_check_blocks(&with_gates(before.lexicon, before.domains.clone()), &test);
    let after_lexicon = Arc::new(after.lexicon);
    let full_after = full_check_blocks(&with_shared(after_lexicon.clone(), after.domains.clone()), &test);
    println!("\nbenign test lines blocked (share of {} lines, none of them in the reference part)", test.len());
    println!("  {:<28} {:>12} {:>12}", "", "before lint", "after lint");
    println!(
        "  {:<28} {:>11.2}% {:>11.2}%",
        "word library, any category",
        pct(fp_before.any, test.len()),
        pct(fp_after.any, test.len())
    );
    println!(
        "  {:<28} {:>11.2}% {:>11.2}%",
        "full check (all gates)",
        pct(full_before, test.len()),
        pct(full_after, test.len())
    );
    let mut categories: Vec<&String> = fp_before.by_category.keys().chain(fp_after.by_category.keys()).collect();
    categories.sort();
    categories.dedup();
    for c in categories {
        let b = fp_before.by_category.get(c).copied().unwrap_or(0);
        let a = fp_after.by_category.get(c).copied().unwrap_or(0);
        println!("  {:<28} {:>11.2}% {:>11.2}%", format!("  {c}"), pct(b, test.len()), pct(a, test.len()));
    }

    let mut top: Vec<(&u32, &usize)> = fp_after.by_entry.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let top: Vec<String> = top.iter().take(12).map(|(e, n)| format!("{} {n}", after_lexicon.entry(**e).word)).collect();
    println!("  entries blocking most test lines after the lint: {}", top.join(", "));

    // The stricter split, for comparison.
    let strict = lint(
        &sources::build(&Sources { folder: folder.clone(), ..Sources::default() })?.lexicon,
        first_halves.iter().copied(),
        &o.lint,
    );
    let mut folder_strict = folder.clone();
    folder_strict.push((LINT_FILE.to_owned(), strict.to_tsv().into_bytes()));
    let strict_lexicon = sources::build(&Sources { folder: folder_strict, ..Sources::default() })?.lexicon;
    let fp_strict = false_positives(&strict_lexicon, &second_halves);
    println!(
        "  stricter split (lint on each file's first half, test on its second half, {} lines): {:.2}% blocked after the lint",
        second_halves.len(),
        pct(fp_strict.any, second_halves.len())
    );

    // Evasion variants of the kept words.
    let (caught, tried, words) = evasion(&after_lexicon);
    println!("\nevasion: {caught} of {tried} variants of {words} kept entries caught (8 variant classes each)");

    // Throughput.
    println!("\nthroughput, one thread, whole corpus (best of {} runs)", o.runs);
    let plain = plain_automaton(&folder)?;
    let t_plain = best(o.runs, || {
        let mut n = 0usize;
        for line in &all {
            n += plain.find_overlapping_iter(line).count();
        }
        n
    });
    let lexicon_before = sources::build(&Sources { folder: folder.clone(), ..Sources::default() })?.lexicon;
    let mut normalized = Normalized::new();
    let mut scratch = Scratch::new();
    let t_before = best(o.runs, || {
        let mut n = 0;
        for line in &all {
            lexicon_before.normalize_and_scan(line, &mut normalized, &mut scratch);
            n += scratch.hits().len();
        }
        n
    });
    let t_after = best(o.runs, || {
        let mut n = 0;
        for line in &all {
            after_lexicon.normalize_and_scan(line, &mut normalized, &mut scratch);
            n += scratch.hits().len();
        }
        n
    });
    let t_norm = best(o.runs, || {
        let mut n = 0;
        for line in &all {
            qunfa_safety::normalize::normalize_into(line, &mut normalized);
            n += normalized.text().len();
        }
        n
    });
    let full = with_shared(after_lexicon.clone(), after.domains.clone());
    let mut check_scratch = CheckScratch::default();
    let t_full = best(o.runs.min(2), || {
        let mut n = 0;
        for line in &all {
            if let Ok(v) = full.check(line, 1, &mut check_scratch) {
                n += v.hits.len();
            }
        }
        n
    });
    let mbs = |secs: f64| bytes as f64 / secs / 1e6;
    println!("  {:<52} {:>8.0} MB/s", "plain daachorse, raw text and words (the limit)", mbs(t_plain));
    println!("  {:<52} {:>8.0} MB/s", "normalisation alone", mbs(t_norm));
    println!(
        "  {:<52} {:>8.0} MB/s  ({:.2}× the limit)",
        "qunfa normalise + word library, whole lexicon",
        mbs(t_before),
        t_plain / t_before
    );
    println!(
        "  {:<52} {:>8.0} MB/s  ({:.2}× the limit)",
        "qunfa normalise + word library, after the lint",
        mbs(t_after),
        t_plain / t_after
    );
    println!("  {:<52} {:>8.0} MB/s", "qunfa full check (gates 1–3, links, masking)", mbs(t_full));
    match python_peer(o, &folder) {
        Ok(Some(mb)) => println!(
            "  {:<52} {:>8.1} MB/s  (qunfa whole lexicon is {:.0}× faster)",
            "pyahocorasick, raw text, every match (Python)",
            mb,
            mbs(t_before) / mb
        ),
        Ok(None) => {
            println!("  pyahocorasick: not installed (scripts/bench-safety.sh installs it in a virtual environment)")
        }
        Err(e) => println!("  pyahocorasick: {e:#}"),
    }

    // Latency per 2,048-character message.
    let messages = messages_of(&all, 2048);
    let passes = o.runs.max(1);
    let lat = |f: &mut dyn FnMut(&str)| -> Latency {
        // Every message once per pass; the first pass as it came, and each
        // message's fastest pass (what the message costs without the shared
        // machine's preemptions, which otherwise make most of the tail).
        let mut first: Vec<f64> = Vec::new();
        let mut fastest: Vec<f64> = vec![f64::MAX; messages.len()];
        for pass in 0..passes {
            for (i, m) in messages.iter().enumerate() {
                let t = Instant::now();
                f(m);
                let us = t.elapsed().as_secs_f64() * 1e6;
                if pass == 0 {
                    first.push(us);
                }
                fastest[i] = fastest[i].min(us);
            }
        }
        Latency::of(first, fastest)
    };
    let before_lat = lat(&mut |m| lexicon_before.normalize_and_scan(m, &mut normalized, &mut scratch));
    let after_lat = lat(&mut |m| after_lexicon.normalize_and_scan(m, &mut normalized, &mut scratch));
    let full_lat = lat(&mut |m| {
        let _ = full.check(m, 1, &mut check_scratch);
    });
    let plain_lat = lat(&mut |m| {
        let _ = plain.find_overlapping_iter(m).count();
    });
    println!(
        "\nper 2,048-character message ({} messages cut from the corpus, {passes} passes; first pass | each message's fastest pass)",
        messages.len()
    );
    for (name, l) in [
        ("plain daachorse (the limit)", &plain_lat),
        ("qunfa normalise + word library, whole lexicon", &before_lat),
        ("qunfa normalise + word library, after the lint", &after_lat),
        ("qunfa full check", &full_lat),
    ] {
        println!(
            "  {:<52} p50 {:>6.1} µs  p99 {:>6.1} µs | p50 {:>6.1} µs  p99 {:>6.1} µs",
            name, l.p50, l.p99, l.fastest_p50, l.fastest_p99
        );
    }
    Ok(())
}

/// Percentiles of the time per message, in µs.
struct Latency {
    p50: f64,
    p99: f64,
    fastest_p50: f64,
    fastest_p99: f64,
}

impl Latency {
    fn of(mut first: Vec<f64>, mut fastest: Vec<f64>) -> Latency {
        first.sort_by(f64::total_cmp);
        fastest.sort_by(f64::total_cmp);
        let at = |v: &[f64], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
        Latency {
            p50: at(&first, 50),
            p99: at(&first, 99),
            fastest_p50: at(&fastest, 50),
            fastest_p99: at(&fastest, 99),
        }
    }
}

fn fnv(line: &str) -> u64 {
    line.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn pct(n: usize, of: usize) -> f64 {
    100.0 * n as f64 / of.max(1) as f64
}

fn with_gates(lexicon: Lexicon, domains: qunfa_safety::links::DomainList) -> Safety {
    with_shared(Arc::new(lexicon), domains)
}

fn with_shared(lexicon: Arc<Lexicon>, domains: qunfa_safety::links::DomainList) -> Safety {
    Safety {
        lexicon,
        domains: Arc::new(domains),
        rules: Arc::new(RuleSet::default_rules()),
        model: Some(qunfa_safety::check::default_model()),
        thresholds: Thresholds::default(),
    }
}

struct FalsePositives {
    any: usize,
    by_category: BTreeMap<String, usize>,
    /// Lines blocked per entry.
    by_entry: BTreeMap<u32, usize>,
}

fn false_positives(lexicon: &Lexicon, lines: &[&str]) -> FalsePositives {
    let mut fp = FalsePositives { any: 0, by_category: BTreeMap::new(), by_entry: BTreeMap::new() };
    let mut entries: Vec<u32> = Vec::new();
    let mut normalized = Normalized::new();
    let mut scratch = Scratch::new();
    let mut cats: Vec<u16> = Vec::new();
    for line in lines {
        lexicon.normalize_and_scan(line, &mut normalized, &mut scratch);
        cats.clear();
        cats.extend(
            scratch
                .hits()
                .iter()
                .map(|h| lexicon.entry(h.entry))
                .filter(|e| e.severity == Severity::Block)
                .map(|e| e.category),
        );
        if cats.is_empty() {
            continue;
        }
        entries.clear();
        entries.extend(
            scratch.hits().iter().filter(|h| lexicon.entry(h.entry).severity == Severity::Block).map(|h| h.entry),
        );
        entries.sort_unstable();
        entries.dedup();
        for &e in &entries {
            *fp.by_entry.entry(e).or_default() += 1;
        }
        fp.any += 1;
        cats.sort_unstable();
        cats.dedup();
        for &c in &cats {
            *fp.by_category.entry(lexicon.category(c).id.clone()).or_default() += 1;
        }
    }
    fp
}

fn full_check_blocks(safety: &Safety, lines: &[&str]) -> usize {
    let mut scratch = CheckScratch::default();
    lines.iter().filter(|l| safety.check(l, 1, &mut scratch).is_ok_and(|v| v.action == Action::Block)).count()
}

/// Every 50th kept entry of two or more characters, in 8 disguises each.
fn evasion(lexicon: &Lexicon) -> (usize, usize, usize) {
    let sample: Vec<&str> = lexicon
        .entries()
        .iter()
        .map(|e| e.word.as_str())
        .filter(|w| w.chars().count() >= 2 && !w.contains('+') && !w.contains(char::is_whitespace))
        .step_by(50)
        .collect();
    let mut scratch = Scratch::new();
    let (mut caught, mut tried) = (0, 0);
    for word in &sample {
        let chars: Vec<String> = word.chars().map(String::from).collect();
        let full_width: String = word
            .chars()
            .map(|c| if ('!'..='~').contains(&c) { char::from_u32(c as u32 + 0xfee0).unwrap_or(c) } else { c })
            .collect();
        let variants = [
            chars.join("*"),
            chars.join(" "),
            chars.join("\u{200b}"),
            chars.join("😀"),
            full_width,
            word.chars().flat_map(|c| [c, c]).collect(),
            word.to_uppercase(),
            format!("【{}】", chars.join("·")),
        ];
        for v in variants {
            tried += 1;
            let text = format!("这是{v}的消息");
            lexicon.scan(&normalize(&text), &mut scratch);
            if scratch.hits().iter().any(|h| lexicon.entry(h.entry).word == *word) {
                caught += 1;
            }
        }
    }
    (caught, tried, sample.len())
}

/// The raw words of the folder's word files, distinct, in a plain automaton.
fn plain_automaton(folder: &[(String, Vec<u8>)]) -> anyhow::Result<daachorse::CharwiseDoubleArrayAhoCorasick<u32>> {
    let mut words: Vec<String> = Vec::new();
    for (name, bytes) in folder {
        if !name.ends_with(".txt") || name.contains("网址") {
            continue;
        }
        words
            .extend(String::from_utf8_lossy(bytes).lines().map(str::trim).filter(|w| !w.is_empty()).map(str::to_owned));
    }
    words.sort();
    words.dedup();
    CharwiseDoubleArrayAhoCorasickBuilder::new()
        .match_kind(MatchKind::Standard)
        .build(&words)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn best(runs: usize, mut f: impl FnMut() -> usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// The corpus cut into messages of `chars` characters.
fn messages_of(lines: &[&str], chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut n = 0;
    for c in lines.iter().flat_map(|l| l.chars().chain(std::iter::once('\n'))) {
        current.push(c);
        n += 1;
        if n == chars {
            out.push(std::mem::take(&mut current));
            n = 0;
        }
    }
    out
}

const PY_BENCH: &str = r#"
import sys, time, os
import ahocorasick
lexicon, corpus = sys.argv[1], sys.argv[2:]
words = set()
for name in os.listdir(lexicon):
    if name.endswith('.txt') and '网址' not in name:
        for w in open(os.path.join(lexicon, name), encoding='utf-8'):
            w = w.strip()
            if w:
                words.add(w)
a = ahocorasick.Automaton()
for w in words:
    a.add_word(w, w)
a.make_automaton()
lines = []
for path in corpus:
    lines.extend(l for l in open(path, encoding='utf-8').read().split('\n') if l.strip())
size = sum(len(l.encode('utf-8')) for l in lines)
best = None
for _ in range(3):
    t = time.perf_counter()
    n = 0
    for l in lines:
        for _ in a.iter(l):
            n += 1
    dt = time.perf_counter() - t
    best = dt if best is None or dt < best else best
print(size / best / 1e6)
"#;

fn python_peer(o: &Options, _folder: &[(String, Vec<u8>)]) -> anyhow::Result<Option<f64>> {
    let python = o.python.clone().unwrap_or_else(|| PathBuf::from("python3"));
    let has = std::process::Command::new(&python)
        .args(["-c", "import ahocorasick"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has {
        return Ok(None);
    }
    let script = std::env::temp_dir().join(format!("qunfa-pyac-{}.py", std::process::id()));
    std::fs::write(&script, PY_BENCH)?;
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script).arg(&o.lexicon);
    cmd.args(o.corpus.iter().map(|p| p.as_os_str()));
    let out = cmd.output().context("running pyahocorasick")?;
    let _ = std::fs::remove_file(&script);
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let mb: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("pyahocorasick's answer")?;
    Ok(Some(mb))
}

/// The shared data next to the project, when it is there.
pub fn default_paths() -> (PathBuf, Vec<PathBuf>) {
    let shared = Path::new("../shared/data");
    let corpus = ["peoples-daily-1998-01.txt", "reviews-negative.txt", "reviews-positive.txt"]
        .iter()
        .map(|f| shared.join("corpus").join(f))
        .collect();
    (shared.join("lexicon"), corpus)
}
