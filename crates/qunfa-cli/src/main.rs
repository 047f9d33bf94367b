//! The `qunfa` binary: `serve`, `workspace create`, `contacts import`, `send`,
//! `explain`, `audit verify` and `bench`.

mod bench;
mod bench_audience;
mod bench_channels;
mod bench_evidence;
mod bench_priority;
mod bench_report;
mod bench_safety;
mod channels;
mod client;
mod config;
mod demo;
mod evidence;
mod recall;
mod report;
mod safety;
mod schedule;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::{
    client::{render_verdict, Client},
    config::{Config, FlagOverrides},
};

// Imports and fan-out allocate many small strings; mimalloc makes that much cheaper than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "qunfa",
    version,
    about = "qunfa (群发): self-hosted mass messaging with the platform's rules built in"
)]
struct Cli {
    /// Configuration file (default: ./qunfa.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (serve).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Directory for the SQLite database and local state.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL instead of SQLite.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// The server admin token (serve: sets it; workspace create: uses it).
    #[arg(long, global = true)]
    admin_token: Option<String>,
    /// A policy file with limits that override the built-in defaults.
    #[arg(long, global = true)]
    policy: Option<PathBuf>,
    /// Base URL of the server for client commands.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Workspace API key for client commands.
    #[arg(long, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (API, docs, delivery engine).
    Serve {
        /// Seed demo workspaces and print their keys.
        #[arg(long)]
        demo: bool,
    },
    /// Manage workspaces (needs the admin token).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Manage contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Compose and send a broadcast (or only preflight it with --dry-run).
    Send(Box<SendArgs>),
    /// Schedule a draft once (--at) or on a cron expression (--cron); cancel, show, settings.
    Schedule(Box<schedule::ScheduleArgs>),
    /// Explain a broadcast: its state, counts and every verdict.
    Explain { broadcast_id: String },
    /// Control a broadcast in flight.
    #[command(subcommand)]
    Broadcast(BroadcastCommand),
    /// Show or set the workspace's speed level (0 fastest … 4 slowest).
    Speed {
        /// 0–4, or "off" to send unthrottled; without it, show the level.
        level: Option<String>,
    },
    /// The workspace's channels: email (SMTP), webhook, SMS, WeCom.
    #[command(subcommand)]
    Channel(channels::ChannelCommand),
    /// Outgoing event webhooks for integrators.
    #[command(subcommand)]
    Events(channels::EventsCommand),
    /// Record an email bounce by its Message-ID.
    Bounce {
        message_id: String,
        /// A soft bounce (this message only); default hard (the address is gone).
        #[arg(long)]
        soft: bool,
        #[arg(long)]
        diagnostic: Option<String>,
    },
    /// Audience expressions.
    #[command(subcommand)]
    Audience(AudienceCommand),
    /// Tags.
    #[command(subcommand)]
    Tags(TagsCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A broadcast's evidence bundle: download it, or verify a file offline.
    Evidence(evidence::EvidenceArgs),
    /// Content safety: check a text, lint a word list, train the risk model, reload.
    #[command(subcommand)]
    Safety(safety::SafetyCommand),
    /// Benchmarks of the bulk paths.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A broadcast's measurement report: rates per channel, reading time, heatmap peaks, links (--csv for CSV).
    Report(report::ReportArgs),
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Create a workspace and print its owner's API key.
    Create {
        #[arg(long)]
        name: String,
        /// personal, enterprise or api.
        #[arg(long)]
        kind: String,
        /// Plan of an api workspace (basic, standard, pro).
        #[arg(long)]
        plan: Option<String>,
    },
}

#[derive(Subcommand)]
enum ContactsCommand {
    /// Import a CSV (header line) or NDJSON file, with a progress bar on a terminal.
    Import {
        file: PathBuf,
        /// Import the valid lines even when some are rejected.
        #[arg(long)]
        partial: bool,
        /// csv or ndjson (default: from the file extension).
        #[arg(long)]
        format: Option<String>,
        /// Contacts per request.
        #[arg(long, default_value_t = 20_000)]
        chunk: usize,
    },
}

#[derive(Subcommand)]
enum BroadcastCommand {
    /// Pause a sending broadcast (batches in flight finish).
    Pause { broadcast_id: String },
    /// Resume a paused broadcast.
    Resume { broadcast_id: String },
    /// Send the failed deliveries of a completed broadcast again.
    RetryFailed {
        broadcast_id: String,
        /// Wait until they are done, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Follow a broadcast's progress until it completes.
    Watch { broadcast_id: String },
    /// Recall a sent message (personal workspaces, within 2 minutes of the send).
    Recall { broadcast_id: String },
    /// Send a correction notice to exactly the recipients of a sent broadcast.
    Correct {
        broadcast_id: String,
        /// The corrected text.
        #[arg(long, conflicts_with = "content")]
        text: Option<String>,
        /// A JSON file with the corrected content object ({"type": "link", …}).
        #[arg(long)]
        content: Option<PathBuf>,
        /// Wait until every recipient has a delivery record.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Args)]
struct SendArgs {
    /// Message text (may use {{name}} and attribute variables).
    #[arg(long, conflicts_with = "content")]
    text: Option<String>,
    /// A JSON file with the content object ({"type": "link", …}).
    #[arg(long)]
    content: Option<PathBuf>,
    /// Send to every contact.
    #[arg(long)]
    all: bool,
    /// Send to a tag (path or id); repeat for several tags.
    #[arg(long)]
    tag: Vec<String>,
    /// Send to picked contacts (ids); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    contact: Vec<String>,
    /// Send to a department (id).
    #[arg(long)]
    department: Option<String>,
    /// Send to an audience expression, e.g. 'tag:"客户等级/金牌" & city = 上海 & last_active > -90d'.
    #[arg(long)]
    expr: Option<String>,
    /// Send to a saved segment (name or id).
    #[arg(long)]
    segment: Option<String>,
    /// Channels (default inbox), e.g. --channel inbox,email.
    #[arg(long, value_delimiter = ',')]
    channel: Vec<String>,
    /// A fallback step CHANNEL:WHEN:SECONDS (WHEN is unread or failed), in
    /// order; e.g. --fallback email:unread:7200 --fallback sms:failed:600.
    #[arg(long)]
    fallback: Vec<String>,
    /// Idempotency key.
    #[arg(long)]
    client_msg_id: Option<String>,
    /// transactional or chat: delivered ahead of running broadcasts.
    #[arg(long)]
    priority: Option<String>,
    /// A flash message: the content self-destructs this many seconds after the send starts.
    #[arg(long)]
    ttl: Option<u64>,
    /// Only print the preflight; the draft stays a draft.
    #[arg(long)]
    dry_run: bool,
    /// Wait until every recipient has a delivery record.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
enum AudienceCommand {
    /// Count the contacts an expression selects now, e.g. qunfa audience count 'tag:金牌 & city = 上海'.
    Count { expr: String },
    /// Save an expression as a named segment (use it as segment:NAME or send --segment NAME).
    Save { name: String, expr: String },
    /// The saved segments, each with its count now.
    Segments,
    /// Add a tag (path or id) to everyone an expression selects; --remove takes it away.
    Tag {
        tag: String,
        expr: String,
        #[arg(long)]
        remove: bool,
    },
    /// The tag report: sizes with sub-tags, last use, dormant tags.
    Report {
        #[arg(long, default_value_t = 90)]
        dormant_days: u32,
    },
}

#[derive(Subcommand)]
enum TagsCommand {
    /// The tag report (the same as `qunfa audience report`).
    Report {
        /// Tags unused for longer than this many days are listed as dormant.
        #[arg(long, default_value_t = 90)]
        dormant_days: u32,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every hash chain of the audit log (reads the database directly).
    Verify,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Contact import: parse + validate + store, against the raw bulk insert.
    Import {
        #[arg(long, default_value_t = 1_000_000)]
        contacts: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson")]
        format: String,
    },
    /// Audience expressions over a large workspace: the bitmap index against the same expressions in SQL.
    Audience {
        #[arg(long, default_value_t = 10_000_000)]
        contacts: u32,
        /// Evaluations of each expression (for p50/p99).
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Runs of each SQL baseline query (the median is reported; 0 skips the baseline).
        #[arg(long, default_value_t = 1)]
        sql_runs: usize,
        /// Keep the generated SQLite database at this path and reuse it when it exists.
        #[arg(long)]
        keep_db: Option<std::path::PathBuf>,
        /// Run only the expression with this number (1–10), e.g. under a profiler.
        #[arg(long)]
        only: Option<usize>,
    },
    /// Latency of chat/transactional messages while a large broadcast runs, against an idle queue.
    Priority {
        #[arg(long, default_value_t = 1_000_000)]
        recipients: usize,
        /// Broadcasts to run, one after the other (urgent messages are sent throughout).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Urgent messages sent on the idle queue for the baseline.
        #[arg(long, default_value_t = 200)]
        baseline: usize,
    },
    /// Content safety on real Chinese text: false positives before and after
    /// the lint, evasion, MB/s and p99 per message, against a plain
    /// Aho-Corasick scan and pyahocorasick.
    Safety {
        /// The word folder (default ../shared/data/lexicon).
        #[arg(long)]
        lexicon: Option<PathBuf>,
        /// Benign text files, one message per line (default the corpus in ../shared/data/corpus).
        #[arg(long)]
        corpus: Vec<PathBuf>,
        /// A Python with pyahocorasick installed (default python3).
        #[arg(long)]
        python: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The lint's --expect-at-least (see `qunfa safety lint`).
        #[arg(long, default_value_t = 0.1)]
        expect_at_least: f64,
    },
    /// Email and webhook broadcasts through the engine to loopback peers, against bare clients.
    Channels {
        #[arg(long, default_value_t = 20_000)]
        recipients: usize,
    },
    /// The evidence bundle of one delivered N-recipient broadcast: export and
    /// verify, against the raw read of its delivery rows and frozen audience.
    Evidence {
        #[arg(long, default_value_t = 1_000_000)]
        recipients: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The measurement report of one delivered N-recipient broadcast with
    /// engagement, against the plain GROUP BY over its delivery records.
    Report {
        #[arg(long, default_value_t = 1_000_000)]
        recipients: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Inbox broadcast fan-out: accepted → all records durable, against the raw bulk insert.
    Fanout {
        #[arg(long, default_value_t = 100_000)]
        recipients: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = FlagOverrides {
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone(),
        admin_token: cli.admin_token.clone(),
        policy: cli.policy.clone(),
        server: cli.server.clone(),
        api_key: cli.api_key.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(cli.command, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { demo } => serve(config, demo),
        Command::Workspace(WorkspaceCommand::Create { name, kind, plan }) => {
            let token =
                config.admin_token.as_ref().context("the admin token is needed: --admin-token or QUNFA_ADMIN_TOKEN")?;
            let client = Client::new(&config.server, Some(token.expose()));
            let body = json!({"name": name, "kind": kind, "plan": plan});
            let w = runtime()?.block_on(client.post("/v1/workspaces", body))?;
            println!("workspace {} ({}) created", w["id"].as_str().unwrap_or("?"), w["kind"].as_str().unwrap_or("?"));
            println!("owner API key (shown once): {}", w["api_key"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Contacts(ContactsCommand::Import { file, partial, format, chunk }) => {
            import(&config, &file, partial, format.as_deref(), chunk)
        }
        Command::Send(args) => runtime()?.block_on(send(&config, *args)),
        Command::Schedule(args) => runtime()?.block_on(schedule::run(&api_client(&config)?, *args)),
        Command::Explain { broadcast_id } => runtime()?.block_on(explain(&config, &broadcast_id)),
        Command::Broadcast(cmd) => runtime()?.block_on(broadcast_control(&config, cmd)),
        Command::Speed { level } => runtime()?.block_on(speed(&config, level)),
        Command::Channel(cmd) => runtime()?.block_on(channels::channel(&api_client(&config)?, cmd)),
        Command::Events(cmd) => runtime()?.block_on(channels::events(&api_client(&config)?, cmd)),
        Command::Bounce { message_id, soft, diagnostic } => {
            runtime()?.block_on(channels::bounce(&api_client(&config)?, message_id, !soft, diagnostic))
        }
        Command::Audit(AuditCommand::Verify) => audit_verify(&config),
        Command::Evidence(args) => evidence::run(&config, args),
        Command::Safety(cmd) => safety::run(&config, cmd),
        Command::Audience(cmd) => runtime()?.block_on(audience(&config, cmd)),
        Command::Tags(TagsCommand::Report { dormant_days }) => {
            runtime()?.block_on(audience(&config, AudienceCommand::Report { dormant_days }))
        }
        Command::Bench(BenchCommand::Import { contacts, runs, format }) => {
            let format = match format.as_str() {
                "csv" => qunfa_core::import::ImportFormat::Csv,
                "ndjson" => qunfa_core::import::ImportFormat::Ndjson,
                other => bail!("unknown format {other:?}: use csv or ndjson"),
            };
            bench::check_url(config.database_url.as_deref())?;
            bench::import(config.database_url.as_deref(), contacts, runs.max(1), format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Audience { contacts, runs, sql_runs, keep_db, only }) => {
            bench_audience::run(contacts, runs.max(1), sql_runs, keep_db, only)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Priority { recipients, runs, baseline }) => {
            bench::check_url(config.database_url.as_deref())?;
            bench_priority::priority(config.database_url.as_deref(), recipients, runs.max(1), baseline.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Safety { lexicon, corpus, python, runs, expect_at_least }) => {
            let (default_lexicon, default_corpus) = bench_safety::default_paths();
            let corpus = if corpus.is_empty() { default_corpus } else { corpus };
            let options = bench_safety::Options {
                lexicon: lexicon.unwrap_or(default_lexicon),
                corpus,
                python,
                runs,
                lint: qunfa_safety::lint::LintOptions { expect_at_least, ..Default::default() },
            };
            bench_safety::safety(&options)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Channels { recipients }) => {
            bench::check_url(config.database_url.as_deref())?;
            bench_channels::channels(config.database_url.as_deref(), recipients)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Evidence { recipients, runs }) => {
            bench::check_url(config.database_url.as_deref())?;
            bench_evidence::evidence(config.database_url.as_deref(), recipients, runs.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Report { recipients, runs }) => {
            bench::check_url(config.database_url.as_deref())?;
            bench_report::report(config.database_url.as_deref(), recipients, runs.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => runtime()?.block_on(report::run(&api_client(&config)?, args)),
        Command::Bench(BenchCommand::Fanout { recipients, runs }) => {
            bench::check_url(config.database_url.as_deref())?;
            bench::fanout(config.database_url.as_deref(), recipients, runs.max(1))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(config: Config, demo: bool) -> anyhow::Result<ExitCode> {
    let policy = config.load_policy()?;
    let webhook_secret = config.webhook_secret.clone();
    let location = config.database();
    let store = qunfa_store::Store::open(location.clone(), config.db_connections)
        .with_context(|| format!("opening the database {location:?}"))?;
    let admin_hash = match &config.admin_token {
        Some(token) => {
            let hash = qunfa_store::secret_hash(token.expose());
            store.setting_set("admin_token_hash", &hash)?;
            hash
        }
        None => match store.setting("admin_token_hash")? {
            Some(hash) => hash,
            None => {
                let token = qunfa_store::new_secret("qfa_");
                let hash = qunfa_store::secret_hash(&token);
                let in_force = store.setting_init("admin_token_hash", &hash)?;
                if in_force == hash {
                    println!("admin token (printed once; set QUNFA_ADMIN_TOKEN to choose your own): {token}");
                }
                in_force
            }
        },
    };
    let safety = qunfa_server::safety::SafetyState::load(config.safety(), &policy.safety)
        .map_err(|e| anyhow::anyhow!("content safety: {e}"))?;
    let demo_keys = if demo { Some(demo::seed(&store, &policy)?) } else { None };
    // The key of unsubscribe links and receipt URLs, shared by every node.
    let link_key = store.link_key()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let engine_config = qunfa_engine::EngineConfig { delivery: policy.delivery.clone(), ..Default::default() };
        let public_url =
            config.public_url.clone().unwrap_or_else(|| format!("http://{addr}")).trim_end_matches('/').to_owned();
        let mut transports = qunfa_engine::Transports::new().context("cannot build the channel clients")?;
        transports.links = Some(qunfa_engine::Links { public_url: public_url.clone(), key: link_key.clone() });
        if let Some(secret) = &webhook_secret {
            let value = serde_json::json!({
                "secret": secret.expose(),
                "allow_private_networks": config.webhook_allow_private_networks,
            });
            let settings = qunfa_core::channel::ChannelSettings::parse(
                qunfa_core::contact::Channel::Webhook,
                &value,
                None,
                &mut String::new,
            )
            .map_err(|e| anyhow::anyhow!("webhook_secret: {e}"))?;
            if let qunfa_core::channel::SettingsKind::Webhook(w) = settings.kind {
                transports.default_webhook = Some(w);
            }
        }
        let options = qunfa_server::ServerOptions {
            public_url,
            link_key,
            server_webhook: transports.default_webhook.is_some(),
            safety: Some(std::sync::Arc::new(safety)),
            clock: None,
            trust_forwarded_for: config.trust_forwarded_for,
        };
        let engine = qunfa_engine::Engine::start_with(store.clone(), engine_config, transports);
        // Audience indexes are built in the background; a query that comes
        // first builds its workspace's index itself.
        let warm = store.clone();
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            match warm.warm_audiences() {
                Ok(n) => {
                    tracing::info!(workspaces = n, took_ms = t.elapsed().as_millis() as u64, "audience indexes built")
                }
                Err(e) => tracing::warn!(error = %e, "building the audience indexes failed; they build on first use"),
            }
        });
        let state = qunfa_server::AppState::with_options(store, policy, engine, admin_hash, options);
        tracing::info!(%addr, "qunfa listening on http://{addr} (API docs at http://{addr}/docs)");
        if let Some(k) = demo_keys {
            print_demo(&addr.to_string(), &k);
        }
        qunfa_server::serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_demo(addr: &str, k: &demo::DemoKeys) {
    println!(
        "\nqunfa demo is running at http://{addr}  (API docs: http://{addr}/docs)\n\
         \n  console: http://{addr}/console/  — log in as owner, sender or reviewer (enterprise)\n    \
         or zhangsan (personal), password {}\n\
         \n  enterprise workspace {} 星辰零售 — 10,000 contacts, departments, nested tags\n    \
         owner key:    {}\n    sender key:   {}\n    reviewer key: {}\n\
         \n  personal workspace {} 张三的个人号 — 150 friends, flat tags\n    owner key:    {}\n\
         \n  a blocked send that explains itself (four tags combined, a fraud phrase):\n    \
         QUNFA_API_KEY={} qunfa explain {}   (or POST /v1/broadcasts/{}/preflight)\n\
         \nTry:  curl -s -H 'Authorization: Bearer {}' http://{addr}/v1/tags\n\
         (these keys and the console password are new at every start; the data stays in the data directory)\n",
        k.console_password,
        k.enterprise_id,
        k.enterprise_owner,
        k.enterprise_sender,
        k.enterprise_reviewer,
        k.personal_id,
        k.personal_owner,
        k.personal_owner,
        k.blocked_draft,
        k.blocked_draft,
        k.enterprise_sender
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down: finishing the delivery step in flight");
}

pub(crate) fn api_client(config: &Config) -> anyhow::Result<Client> {
    let key = config.api_key.as_ref().context("a workspace API key is needed: --api-key or QUNFA_API_KEY")?;
    Ok(Client::new(&config.server, Some(key.expose())))
}

/// `start..end` of one record in a file.
type ByteRange = (usize, usize);

/// Byte ranges of the records of a file, so it can be sent in chunks that
/// are each a valid file (CSV chunks repeat the header line).
fn record_ranges(data: &[u8], format: qunfa_core::import::ImportFormat) -> anyhow::Result<(Vec<u8>, Vec<ByteRange>)> {
    use qunfa_core::import::ImportFormat;
    match format {
        ImportFormat::Ndjson => {
            let mut ranges = Vec::new();
            let mut start = 0;
            for (i, b) in data.iter().enumerate() {
                if *b == b'\n' {
                    if data[start..i].iter().any(|b| !b.is_ascii_whitespace()) {
                        ranges.push((start, i + 1));
                    }
                    start = i + 1;
                }
            }
            if data[start..].iter().any(|b| !b.is_ascii_whitespace()) {
                ranges.push((start, data.len()));
            }
            Ok((Vec::new(), ranges))
        }
        ImportFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(data);
            let mut record = csv::ByteRecord::new();
            let mut starts = Vec::new();
            loop {
                let pos = reader.position().byte() as usize;
                if !reader.read_byte_record(&mut record)? {
                    break;
                }
                starts.push(pos);
            }
            anyhow::ensure!(!starts.is_empty(), "the CSV file is empty");
            let header_end = starts.get(1).copied().unwrap_or(data.len());
            let mut ranges = Vec::new();
            for (i, &s) in starts.iter().enumerate().skip(1) {
                ranges.push((s, starts.get(i + 1).copied().unwrap_or(data.len())));
            }
            let mut header = data[..header_end].to_vec();
            if !header.ends_with(b"\n") {
                header.push(b'\n');
            }
            Ok((header, ranges))
        }
    }
}

fn import(
    config: &Config,
    file: &std::path::Path,
    partial: bool,
    format: Option<&str>,
    chunk: usize,
) -> anyhow::Result<ExitCode> {
    use qunfa_core::import::{self, ImportFormat};
    let client = api_client(config)?;
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let format = match format {
        Some("csv") => ImportFormat::Csv,
        Some("ndjson") => ImportFormat::Ndjson,
        Some(f) => bail!("unknown format {f:?}: use csv or ndjson"),
        None => ImportFormat::detect(&file.display().to_string())
            .context("cannot tell the format from the file name: pass --format csv|ndjson")?,
    };
    // Validate the whole file first: nothing is sent unless it all parses (or --partial).
    let parsed = import::parse_parallel(format, &data, qunfa_store::contacts::import_threads());
    if !parsed.rejected.is_empty() {
        eprintln!("{} line(s) rejected:", parsed.rejected.len());
        for r in parsed.rejected.iter().take(20) {
            eprintln!("  line {}: {} {}", r.line, r.code.as_str(), r.message);
        }
        if parsed.rejected.len() > 20 {
            eprintln!("  … and {} more", parsed.rejected.len() - 20);
        }
        if !partial {
            eprintln!("nothing was imported (use --partial to import the valid lines)");
            return Ok(ExitCode::from(2));
        }
    }
    let (header, ranges) = record_ranges(&data, format)?;
    let bar = indicatif::ProgressBar::new(ranges.len() as u64);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} contacts  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (content_type, fmt) = match format {
        ImportFormat::Csv => ("text/csv", "csv"),
        ImportFormat::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let rt = runtime()?;
    let (mut imported, mut updated) = (0u64, 0u64);
    for group in ranges.chunks(chunk.max(1)) {
        let mut body = header.clone();
        for &(s, e) in group {
            body.extend_from_slice(&data[s..e]);
            if !body.ends_with(b"\n") {
                body.push(b'\n');
            }
        }
        let path = format!("/v1/contacts/import?format={fmt}&partial={partial}");
        let (_, out) = rt.block_on(client.raw(&path, content_type, body)).with_context(|| {
            format!("the import stopped after {imported} new and {updated} updated contacts (each chunk is one transaction)")
        })?;
        imported += out["imported"].as_u64().unwrap_or(0);
        updated += out["updated"].as_u64().unwrap_or(0);
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    println!("imported {imported} new contacts, updated {updated}, rejected {}", parsed.rejected.len());
    Ok(ExitCode::SUCCESS)
}

async fn send(config: &Config, a: SendArgs) -> anyhow::Result<ExitCode> {
    let client = api_client(config)?;
    let content: Value = match (&a.text, &a.content) {
        (Some(t), _) => json!({"type": "text", "text": t}),
        (None, Some(path)) => {
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)?
        }
        (None, None) => bail!("give --text or --content"),
    };
    let expr =
        a.expr.as_ref().map(|e| json!({"expr": e})).or_else(|| a.segment.as_ref().map(|s| json!({"segment": s})));
    let audience = match (a.all, a.tag.len(), a.contact.is_empty(), &a.department, expr) {
        (true, 0, true, None, None) => json!({"all": true}),
        (false, 1, true, None, None) => json!({"tag": a.tag[0]}),
        (false, n, true, None, None) if n > 1 => json!({"tags": a.tag}),
        (false, 0, false, None, None) => json!({"contact_ids": a.contact}),
        (false, 0, true, Some(d), None) => json!({"department": d}),
        (false, 0, true, None, Some(e)) if a.expr.is_none() || a.segment.is_none() => e,
        _ => {
            bail!("give exactly one audience: --all, --tag (repeatable), --contact, --department, --expr or --segment")
        }
    };
    let channels = if a.channel.is_empty() { vec!["inbox".to_owned()] } else { a.channel.clone() };
    let mut body = json!({"content": content, "audience": audience, "channels": channels});
    if let Some(id) = &a.client_msg_id {
        body["client_msg_id"] = json!(id);
    }
    if let Some(p) = &a.priority {
        body["priority"] = json!(p);
    }
    if !a.fallback.is_empty() {
        let mut steps = Vec::new();
        for f in &a.fallback {
            let parts: Vec<&str> = f.split(':').collect();
            let [channel, when, seconds] = parts[..] else {
                anyhow::bail!("--fallback takes CHANNEL:WHEN:SECONDS, e.g. email:unread:7200; got {f:?}")
            };
            let seconds: u32 = seconds.parse().map_err(|_| anyhow::anyhow!("--fallback {f:?}: SECONDS is a number"))?;
            steps.push(json!({"channel": channel, "when": when, "after_seconds": seconds}));
        }
        body["fallback"] = json!(steps);
    }
    if let Some(t) = a.ttl {
        body["ttl_seconds"] = json!(t);
    }
    let b = client.post("/v1/broadcasts", body).await?;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    if a.dry_run {
        let p = client.post(&format!("/v1/broadcasts/{id}/preflight"), json!({})).await?;
        print_preflight(&id, &p);
        return Ok(if p["ok"].as_bool() == Some(true) { ExitCode::SUCCESS } else { ExitCode::from(2) });
    }
    match client.send(reqwest::Method::POST, &format!("/v1/broadcasts/{id}/send"), None).await {
        Ok((_, b)) => {
            println!("broadcast {id}: {} ({} recipients)", b["state"].as_str().unwrap_or("?"), b["recipients"]);
            if b["state"] == "pending_approval" {
                println!("waiting for approval: a reviewer runs POST /v1/broadcasts/{id}/approve");
                return Ok(ExitCode::SUCCESS);
            }
            if a.wait {
                wait(&client, &id).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("broadcast {id} was not sent:\n{e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Prints an API error about an expression, with a caret under its position.
fn expr_error(expr: &str, status: u16, body: &Value) -> ExitCode {
    if let Some(pos) = body["error"]["position"].as_u64() {
        // CJK characters are two columns wide.
        let width: usize = expr.chars().take(pos as usize).map(|c| if c.is_ascii() { 1 } else { 2 }).sum();
        eprintln!("  {expr}\n  {}^", " ".repeat(width));
    }
    eprintln!("{}", client::describe_error(status, body));
    ExitCode::from(2)
}

async fn audience(config: &Config, cmd: AudienceCommand) -> anyhow::Result<ExitCode> {
    let client = api_client(config)?;
    match cmd {
        AudienceCommand::Count { expr } => {
            let (status, body) =
                client.send_raw(reqwest::Method::POST, "/v1/audiences/count", Some(json!({"expr": expr}))).await?;
            if status != 200 {
                return Ok(expr_error(&expr, status, &body));
            }
            println!("{} contacts ({:.2} ms)", body["count"], body["took_ms"].as_f64().unwrap_or(0.0));
            for c in body["sample"].as_array().into_iter().flatten() {
                println!(
                    "  {:>12}  {:<16} {}  {}",
                    c["id"].as_str().unwrap_or("?"),
                    c["external_id"].as_str().unwrap_or("?"),
                    c["name"].as_str().unwrap_or(""),
                    c["attributes"]
                );
            }
        }
        AudienceCommand::Save { name, expr } => {
            let (status, body) = client
                .send_raw(reqwest::Method::POST, "/v1/segments", Some(json!({"name": name, "expr": expr})))
                .await?;
            if status != 201 {
                return Ok(expr_error(&expr, status, &body));
            }
            println!("segment {} {:?}: {} contacts now", body["id"].as_str().unwrap_or("?"), name, body["count"]);
        }
        AudienceCommand::Segments => {
            let list = client.get("/v1/segments").await?;
            for s in list.as_array().into_iter().flatten() {
                println!(
                    "{:>6}  {:<20} {:>10} contacts  {}",
                    s["id"].as_str().unwrap_or("?"),
                    s["name"].as_str().unwrap_or("?"),
                    s["count"],
                    s["expr"].as_str().unwrap_or("")
                );
            }
        }
        AudienceCommand::Tag { tag, expr, remove } => {
            let tags = client.get("/v1/tags").await?;
            let id = tags
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["path"] == tag.as_str() || t["id"] == tag.as_str())
                .and_then(|t| t["id"].as_str().map(str::to_owned))
                .with_context(|| format!("no tag {tag:?} in this workspace (create it with POST /v1/tags)"))?;
            let method = if remove { reqwest::Method::DELETE } else { reqwest::Method::POST };
            let (status, body) =
                client.send_raw(method, &format!("/v1/tags/{id}/members"), Some(json!({"expr": expr}))).await?;
            if status != 200 {
                return Ok(expr_error(&expr, status, &body));
            }
            let verb = if remove { "removed from" } else { "added to" };
            println!("{} contacts {verb} {tag}", body["changed"]);
        }
        AudienceCommand::Report { dormant_days } => {
            let r = client.get(&format!("/v1/tags/report?dormant_days={dormant_days}")).await?;
            for t in r["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>10} (with sub-tags {:>10})  last used {:<24} {}",
                    t["path"].as_str().unwrap_or("?"),
                    t["n_contacts"],
                    t["size"],
                    t["last_used_at"].as_str().unwrap_or("never"),
                    if t["dormant"] == true { "DORMANT" } else { "" }
                );
            }
            println!("{} dormant tag(s): not used for {dormant_days} days", r["n_dormant"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn broadcast_control(config: &Config, cmd: BroadcastCommand) -> anyhow::Result<ExitCode> {
    let client = api_client(config)?;
    let (id, action, wait_after) = match &cmd {
        BroadcastCommand::Pause { broadcast_id } => (broadcast_id, Some("pause"), false),
        BroadcastCommand::Resume { broadcast_id } => (broadcast_id, Some("resume"), false),
        BroadcastCommand::RetryFailed { broadcast_id, wait } => (broadcast_id, Some("retry-failed"), *wait),
        BroadcastCommand::Watch { broadcast_id } => (broadcast_id, None, true),
        BroadcastCommand::Recall { broadcast_id } => return recall::recall(&client, broadcast_id).await,
        BroadcastCommand::Correct { broadcast_id, text, content, wait: wait_after } => {
            let id = recall::correct(&client, broadcast_id, text.as_deref(), content.as_deref()).await?;
            if *wait_after {
                wait(&client, &id).await?;
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(action) = action {
        let r = client.post(&format!("/v1/broadcasts/{id}/{action}"), json!({})).await?;
        let b = if action == "retry-failed" {
            println!("{} failed deliveries queued again", r["redriven"]);
            &r["broadcast"]
        } else {
            &r
        };
        let c = &b["counts"];
        println!(
            "broadcast {id}: {} — delivered {} of {}, failed {}",
            b["state"].as_str().unwrap_or("?"),
            c["delivered"],
            c["total"],
            c["failed"]
        );
    }
    if wait_after {
        wait(&client, id).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn speed(config: &Config, level: Option<String>) -> anyhow::Result<ExitCode> {
    let client = api_client(config)?;
    let r = match level.as_deref() {
        None => client.get("/v1/speed").await?,
        Some("off" | "none") => client.send(reqwest::Method::PUT, "/v1/speed", Some(json!({"level": null}))).await?.1,
        Some(l) => {
            let level: u8 =
                l.parse().map_err(|_| anyhow::anyhow!("the level is 0 (fastest) to 4 (slowest), or off"))?;
            client.send(reqwest::Method::PUT, "/v1/speed", Some(json!({"level": level}))).await?.1
        }
    };
    match r["level"].as_u64() {
        Some(l) => println!("speed level {l}: {} recipients per minute", r["per_minute"]),
        None => println!("no speed level: broadcasts are sent unthrottled"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait(client: &Client, id: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}") {
        bar.set_style(style);
    }
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    loop {
        let b = client.get(&format!("/v1/broadcasts/{id}")).await?;
        bar.set_length(b["counts"]["total"].as_u64().unwrap_or(0));
        bar.set_position(b["counts"]["sent"].as_u64().unwrap_or(0));
        bar.set_message(b["state"].as_str().unwrap_or("?").to_owned());
        if b["state"] == "completed" || b["state"] == "cancelled" || b["state"] == "blocked" {
            bar.finish_and_clear();
            println!(
                "broadcast {id}: {} — delivered {}, failed {}",
                b["state"].as_str().unwrap_or("?"),
                b["counts"]["delivered"],
                b["counts"]["failed"]
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_preflight(id: &str, p: &Value) {
    let verdicts = p["verdicts"].as_array().cloned().unwrap_or_default();
    println!(
        "broadcast {id}: {} recipients — {}",
        p["recipients"],
        if p["ok"].as_bool() == Some(true) { "may be sent" } else { "blocked" }
    );
    if verdicts.is_empty() {
        println!("  no verdicts: nothing stops this send");
    }
    for v in &verdicts {
        println!("{}", render_verdict(v));
    }
}

async fn explain(config: &Config, id: &str) -> anyhow::Result<ExitCode> {
    let client = api_client(config)?;
    let b = client.get(&format!("/v1/broadcasts/{id}")).await?;
    let c = &b["counts"];
    let state = b["state"].as_str().unwrap_or("?");
    if matches!(state, "draft" | "pending_approval" | "scheduled") {
        println!("broadcast {id}: {state} (the audience is counted below and frozen when it is sent)");
    } else {
        println!(
            "broadcast {id}: {state} — {} recipients; delivered {}, failed {}, read {}, replied {}",
            b["recipients"], c["delivered"], c["failed"], c["read"], c["replied"]
        );
    }
    match b["state"].as_str() {
        Some("draft") | Some("pending_approval") | Some("scheduled") => {
            let p = client.post(&format!("/v1/broadcasts/{id}/preflight"), json!({})).await?;
            print_preflight(id, &p);
        }
        _ => {
            println!("verdicts recorded when it was submitted:");
            let recorded = b["verdicts"].as_array().cloned().unwrap_or_default();
            if recorded.iter().all(|v| v.get("code").is_none()) {
                println!("  none");
            }
            for v in recorded {
                if v.get("code").is_some() {
                    println!("{}", render_verdict(&v));
                } else if let Some(by) = v.get("approved_by") {
                    println!("  approved by member {by}: {}", v["comment"].as_str().unwrap_or(""));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_verify(config: &Config) -> anyhow::Result<ExitCode> {
    let store = qunfa_store::Store::open(config.database(), 1)?;
    let mut broken = 0;
    let reports = store.audit_verify()?;
    for r in &reports {
        match &r.result {
            Ok(n) => println!("chain {}: ok ({n} entries)", r.chain),
            Err(b) => {
                broken += 1;
                println!("chain {}: BROKEN — {b:?}", r.chain);
            }
        }
    }
    if broken > 0 {
        println!("{broken} of {} chains are broken: the audit log was changed", reports.len());
        Ok(ExitCode::FAILURE)
    } else {
        println!("all {} chains verified", reports.len());
        Ok(ExitCode::SUCCESS)
    }
}
