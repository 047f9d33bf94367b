use qunfa_safety::lexicon::*;
use qunfa_safety::normalize::*;
use std::time::Instant;
fn main() {
    let dir = "/work/shared/data/lexicon";
    let mut b = LexiconBuilder::new();
    let t = Instant::now();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map_or(true, |x| x != "txt") {
            continue;
        }
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        if stem.contains("网址") {
            continue;
        }
        b.category(&stem, Severity::Block, "", "");
        b.add_words(&stem, &stem, &std::fs::read(&p).unwrap()).unwrap();
    }
    let l = b.build().unwrap();
    println!("built {:?} in {:?} {:?}", l, t.elapsed(), l.stats());
    let mut lines = Vec::new();
    for f in ["peoples-daily-1998-01.txt", "reviews-negative.txt", "reviews-positive.txt"] {
        let text = std::fs::read_to_string(format!("/work/shared/data/corpus/{f}")).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let mut n = Normalized::new();
    let mut sc = Scratch::new();
    for round in 0..3 {
        let t = Instant::now();
        let mut total = 0usize;
        let mut hit_lines = 0;
        for line in &lines {
            normalize_into(line, &mut n);
            total += n.text().len();
        }
        let tn = t.elapsed();
        let t = Instant::now();
        for line in &lines {
            normalize_into(line, &mut n);
            l.scan(&n, &mut sc);
            if !sc.hits().is_empty() {
                hit_lines += 1;
            }
        }
        let ts = t.elapsed();
        let normed: Vec<String> = lines
            .iter()
            .map(|line| {
                normalize_into(line, &mut n);
                n.text().to_owned()
            })
            .collect();
        let t = Instant::now();
        let mut m = 0usize;
        for x in &normed {
            m += l.count_raw(x);
        }
        println!(
            "raw automaton over normalised: {:.0} MB/s, {m} matches",
            bytes as f64 / t.elapsed().as_secs_f64() / 1e6
        );
        let nn: Vec<Normalized> = lines.iter().map(|line| normalize(line)).collect();
        let t = Instant::now();
        let mut m = 0usize;
        for x in &nn {
            l.scan(x, &mut sc);
            m += sc.hits().len();
        }
        println!("scan() over normalised: {:.0} MB/s, {m} hits", bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
        println!(
            "round {round}: normalise {:.0} MB/s, normalise+scan {:.0} MB/s, hit lines {:.1}% ({total})",
            bytes as f64 / tn.as_secs_f64() / 1e6,
            bytes as f64 / ts.as_secs_f64() / 1e6,
            100.0 * hit_lines as f64 / lines.len() as f64
        );
    }
}
