//! `qunfa safety …`: check a text (through the API), reload the server's word
//! library, and two local tools — the lexicon lint and risk-model training.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context};
use clap::Subcommand;
use qunfa_safety::{
    lint::{lint, LintOptions},
    model::{parse_jsonl, Model, TrainOptions},
    sources::{self, Sources, LINT_FILE},
    Safety,
};
use serde_json::{json, Value};

use crate::{client::Client, config::Config};

#[derive(Subcommand)]
pub enum SafetyCommand {
    /// Check a text with the server's content-safety gates: the action, every
    /// hit with its position, the masked text.
    Check {
        /// The text (or use --file).
        text: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// What the server's check is made of: versions, categories, counts.
    Info,
    /// The review queue: sends held by the content check.
    Reviews {
        /// pending (default), approved or rejected.
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Approve a held send (it is dispatched at once).
    Approve {
        review_id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a held send with a reason.
    Reject {
        review_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Decided reviews as labelled JSONL (approved → ham, rejected → spam), for `train --data`.
    Examples,
    /// Reload the server's word library, rules and model from their files
    /// (needs the admin token). On an error the previous version keeps serving.
    Reload,
    /// Find word-list entries likely to block ordinary text: single characters
    /// and entries found in benign reference text. Proposes `drop` or
    /// `review` for each; --apply writes them to the folder's lint.tsv, which
    /// the word library applies when it loads.
    Lint {
        /// The folder of word files.
        #[arg(long)]
        lexicon: PathBuf,
        /// Benign reference text, one message per line (repeatable). Measure the
        /// result on other text than this.
        #[arg(long, required = true)]
        reference: Vec<PathBuf>,
        /// Entries in at least this many reference lines become `review`.
        #[arg(long, default_value_t = 1)]
        review_lines: usize,
        /// Entries in at least this share of reference lines are dropped.
        #[arg(long, default_value_t = 0.002)]
        drop_share: f64,
        /// Demote entries a character-bigram model of the reference expects at
        /// least this often in it (ordinary-looking words; 0: off).
        #[arg(long, default_value_t = 0.1)]
        expect_at_least: f64,
        /// Demote a whole category to review when it would still block this
        /// share of held-out reference lines after the words' proposals (0: off).
        #[arg(long, default_value_t = 0.002)]
        category_review_share: f64,
        /// Write the proposals to LEXICON/lint.tsv.
        #[arg(long)]
        apply: bool,
    },
    /// Train the risk model from labelled JSONL ({"text", "label": spam|ham}),
    /// print its precision and recall on held-out examples, write it.
    Train {
        /// Labelled examples (repeatable); default: the examples shipped with qunfa.
        #[arg(long)]
        data: Vec<PathBuf>,
        /// Also use the examples shipped with qunfa when --data is given.
        #[arg(long)]
        with_shipped: bool,
        /// Where to write the model (then set safety_model to it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Share of examples held out for the evaluation.
        #[arg(long, default_value_t = 0.2)]
        holdout: f32,
        #[arg(long, default_value_t = 12)]
        epochs: u32,
    },
}

pub fn run(config: &Config, cmd: SafetyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SafetyCommand::Check { text, file, json } => {
            let text = match (text, file) {
                (Some(t), None) => t,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                _ => bail!("give the text or --file, not both"),
            };
            let client = crate::api_client(config)?;
            let v = crate::runtime()?.block_on(client.post("/v1/safety/check", json!({ "text": text })))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_check(&v);
            }
            Ok(if v["action"] == "block" { ExitCode::from(3) } else { ExitCode::SUCCESS })
        }
        SafetyCommand::Info => {
            let client = crate::api_client(config)?;
            let v = crate::runtime()?.block_on(client.get("/v1/safety"))?;
            print_info(&v);
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Reviews { state } => {
            let client = crate::api_client(config)?;
            let v = crate::runtime()?.block_on(client.get(&format!("/v1/safety/reviews?state={state}")))?;
            let reviews = v["reviews"].as_array().cloned().unwrap_or_default();
            if reviews.is_empty() {
                println!("no {state} reviews");
            }
            for r in reviews {
                let hits: Vec<String> = r["hits"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| format!("{} {}", h["rule"].as_str().unwrap_or(""), h["original"].as_str().unwrap_or("")))
                    .collect();
                println!(
                    "review {}  broadcast {}  {}  risk {:.2}{}  {}\n  {}\n  hits: {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["broadcast_id"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                    r["risk"].as_f64().unwrap_or(0.0),
                    if r["sampled"] == true { " (random review)" } else { "" },
                    r["created_at"].as_str().unwrap_or(""),
                    r["text"].as_str().unwrap_or(""),
                    hits.join("; ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Approve { review_id, comment } => {
            let client = crate::api_client(config)?;
            let body = json!({ "reason": comment });
            let v =
                crate::runtime()?.block_on(client.post(&format!("/v1/safety/reviews/{review_id}/approve"), body))?;
            println!(
                "review {review_id} {}; broadcast {} is on its way",
                v["state"].as_str().unwrap_or("?"),
                v["broadcast_id"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Reject { review_id, reason } => {
            let client = crate::api_client(config)?;
            let v = crate::runtime()?.block_on(
                client.post(&format!("/v1/safety/reviews/{review_id}/reject"), json!({ "reason": reason })),
            )?;
            println!(
                "review {review_id} {}; broadcast {} is cancelled",
                v["state"].as_str().unwrap_or("?"),
                v["broadcast_id"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Examples => {
            let client = crate::api_client(config)?;
            let (status, v) =
                crate::runtime()?.block_on(client.send(reqwest::Method::GET, "/v1/safety/reviews/examples", None))?;
            if status != 200 {
                bail!("{}", crate::client::describe_error(status, &v));
            }
            match v {
                Value::String(text) => print!("{text}"),
                other => println!("{other}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Reload => {
            let token =
                config.admin_token.as_ref().context("the admin token is needed: --admin-token or QUNFA_ADMIN_TOKEN")?;
            let client = Client::new(&config.server, Some(token.expose()));
            let v = crate::runtime()?.block_on(client.post("/v1/safety/reload", json!({})))?;
            println!("reloaded");
            print_info(&v);
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Lint {
            lexicon,
            reference,
            review_lines,
            drop_share,
            expect_at_least,
            category_review_share,
            apply,
        } => {
            let folder = qunfa_server::safety::read_folder(&lexicon).map_err(anyhow::Error::msg)?;
            // Lint the lists as they are, without an earlier lint's decisions.
            let folder: Vec<_> = folder.into_iter().filter(|(name, _)| name != LINT_FILE).collect();
            let built = sources::build(&Sources { folder, ..Sources::default() })?;
            let mut lines = Vec::new();
            for path in &reference {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                lines.extend(text.lines().map(str::to_owned));
            }
            let options = LintOptions {
                review_lines,
                drop_share,
                drop_single_chars: true,
                expect_at_least,
                category_review_share,
            };
            let report = lint(&built.lexicon, lines.iter().map(String::as_str), &options);
            let drops = report.proposals.iter().filter(|p| p.decision.is_none()).count();
            for p in report.proposals.iter().take(40) {
                println!("{:<12} {:<8} {:<16} {}", p.word, p.decision_str(), p.category, p.reason);
            }
            for c in &report.categories {
                println!("category {:<16} {:<8} {}", c.category, c.decision, c.reason);
            }
            if report.proposals.len() > 40 {
                println!("… {} more", report.proposals.len() - 40);
            }
            println!(
                "{} entries; {} reference lines, {} ({:.1}%) blocked as the lists are; proposals: {} drop, {} review",
                built.lexicon.entries().len(),
                report.reference_lines,
                report.blocked_lines,
                100.0 * report.blocked_lines as f64 / report.reference_lines.max(1) as f64,
                drops,
                report.proposals.len() - drops
            );
            if apply {
                let path = lexicon.join(LINT_FILE);
                std::fs::write(&path, report.to_tsv()).with_context(|| format!("cannot write {}", path.display()))?;
                // A sample of the reference lays the automaton out for such text.
                let step = (lines.len() / sources::LAYOUT_LINES).max(1);
                let sample: Vec<&str> =
                    lines.iter().step_by(step).take(sources::LAYOUT_LINES).map(String::as_str).collect();
                let layout = lexicon.join(sources::LAYOUT_FILE);
                std::fs::write(&layout, sample.join("\n") + "\n")
                    .with_context(|| format!("cannot write {}", layout.display()))?;
                println!("wrote {} and {} (reload the server to apply them)", path.display(), layout.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        SafetyCommand::Train { data, with_shipped, out, holdout, epochs } => {
            let mut examples = Vec::new();
            if data.is_empty() || with_shipped {
                examples.extend(parse_jsonl(qunfa_safety::check::DEFAULT_EXAMPLES)?);
            }
            for path in &data {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                examples.extend(parse_jsonl(&text).with_context(|| format!("in {}", path.display()))?);
            }
            // Signals come from the word library and rules the server uses.
            let safety = local_safety(config)?;
            let featurized = qunfa_safety::check::featurize(&safety, &examples);
            let options = TrainOptions { holdout, epochs, ..TrainOptions::default() };
            let (model, e) = Model::train(&featurized, &options)?;
            println!(
                "{} examples ({} spam): trained on {}, evaluated on {} held out",
                examples.len(),
                examples.iter().filter(|e| e.spam).count(),
                e.n_train,
                e.n_test
            );
            println!(
                "held out: precision {:.3}, recall {:.3}, F1 {:.3}, accuracy {:.3}, AUC {:.3} (threshold {:.2}; tp {} fp {} tn {} fn {})",
                e.precision,
                e.recall,
                e.f1,
                e.accuracy,
                e.auc,
                e.threshold,
                e.true_positives,
                e.false_positives,
                e.true_negatives,
                e.false_negatives
            );
            println!("model version {}", model.version());
            if let Some(out) = out {
                std::fs::write(&out, model.to_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
                println!("wrote {} (set safety_model to it and reload)", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The word library and rules as the configuration names them, without a model.
fn local_safety(config: &Config) -> anyhow::Result<Safety> {
    let c = config.safety();
    let folder = match &c.lexicon_dir {
        Some(dir) => qunfa_server::safety::read_folder(dir).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let built = sources::build(&Sources { defaults: !c.no_defaults, folder, ..Sources::default() })?;
    let rules = match &c.rules_file {
        Some(path) => qunfa_safety::rules::RuleSet::parse(&std::fs::read_to_string(path)?)?,
        None => qunfa_safety::rules::RuleSet::default_rules(),
    };
    Ok(Safety::without_model(built.lexicon, built.domains, rules))
}

fn print_check(v: &Value) {
    println!(
        "{}  (risk {:.2}, {} µs; lexicon {}, rules {}, model {})",
        v["action"].as_str().unwrap_or("?"),
        v["risk"].as_f64().unwrap_or(0.0),
        v["took_us"],
        v["lexicon_version"].as_str().unwrap_or("?"),
        v["rules_version"].as_str().unwrap_or("?"),
        v["model_version"].as_str().unwrap_or("-"),
    );
    for h in v["hits"].as_array().into_iter().flatten() {
        let at = if h["start"] == h["end"] {
            "whole text".to_owned()
        } else {
            format!("{}–{} {:?}", h["start"], h["end"], h["original"].as_str().unwrap_or(""))
        };
        println!(
            "  {:<7} {:<8} {:<22} {:<24} {}",
            h["action"].as_str().unwrap_or(""),
            h["gate"].as_str().unwrap_or(""),
            h["category"].as_str().unwrap_or(""),
            h["rule"].as_str().unwrap_or(""),
            at
        );
    }
    if v["hits"].as_array().is_some_and(|h| !h.is_empty()) {
        println!("masked: {}", v["masked"].as_str().unwrap_or(""));
    }
}

fn print_info(v: &Value) {
    println!(
        "lexicon {} ({} entries, {} allow phrases, {} blocked domains); rules {} ({}); model {} (precision {:.3}, recall {:.3})",
        v["lexicon_version"].as_str().unwrap_or("?"),
        v["entries"],
        v["allow_phrases"],
        v["blocked_domains"],
        v["rules_version"].as_str().unwrap_or("?"),
        v["rules"],
        v["model_version"].as_str().unwrap_or("-"),
        v["model_precision"].as_f64().unwrap_or(0.0),
        v["model_recall"].as_f64().unwrap_or(0.0),
    );
    for c in v["categories"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<7} {:>6}  {}",
            c["id"].as_str().unwrap_or(""),
            c["severity"].as_str().unwrap_or(""),
            c["entries"],
            c["zh"].as_str().unwrap_or("")
        );
    }
}
