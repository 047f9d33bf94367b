//! The content-safety state of a server: the sources it was configured with,
//! the `Safety` in use (swapped atomically by a reload; checks in flight
//! finish on the version they started with), and a scratch buffer per thread.

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use qunfa_core::policy::SafetyPolicy;
use qunfa_safety::{
    check::default_model,
    model::Model,
    rules::RuleSet,
    sources::{self, Sources},
    CheckError, CheckScratch, Safety, Thresholds, Verdict,
};

/// Where the word library, rules and model come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafetyConfig {
    /// Leave the lists shipped with qunfa out (they are in by default).
    pub no_defaults: bool,
    /// A folder of word files (see `qunfa_safety::sources`).
    pub lexicon_dir: Option<PathBuf>,
    /// A rules file replacing the default rules.
    pub rules_file: Option<PathBuf>,
    /// A model trained by `qunfa safety train`, replacing the default one.
    pub model_file: Option<PathBuf>,
}

/// The safety check of a server.
pub struct SafetyState {
    config: SafetyConfig,
    thresholds: Thresholds,
    current: ArcSwap<Safety>,
    /// The version of the API words the library in use was built with; held
    /// for a whole reload, so two reloads never swap out of order.
    words_signature: std::sync::Mutex<String>,
}

impl std::fmt::Debug for SafetyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyState").field("config", &self.config).finish()
    }
}

/// The thresholds of the policy file.
pub fn thresholds(policy: &SafetyPolicy) -> Thresholds {
    Thresholds {
        risk_review: policy.risk_review,
        risk_derank: policy.risk_derank,
        risk_block: policy.risk_block,
        sample_base: policy.review_sample_base,
        sample_per_risk: policy.review_sample_per_risk,
    }
}

impl SafetyState {
    /// Loads everything the configuration names.
    ///
    /// # Errors
    /// A file that cannot be read or does not parse, named in the message.
    pub fn load(config: SafetyConfig, policy: &SafetyPolicy) -> Result<SafetyState, String> {
        let thresholds = thresholds(policy);
        let safety = build(&config, &thresholds, &[])?;
        let words_signature = std::sync::Mutex::new(String::new());
        Ok(SafetyState { config, thresholds, current: ArcSwap::from_pointee(safety), words_signature })
    }

    /// The defaults only (tests, and servers without configuration).
    pub fn defaults(policy: &SafetyPolicy) -> SafetyState {
        let mut safety = Safety::defaults();
        let thresholds = thresholds(policy);
        safety.thresholds = thresholds.clone();
        let words_signature = std::sync::Mutex::new(String::new());
        SafetyState {
            config: SafetyConfig::default(),
            thresholds,
            current: ArcSwap::from_pointee(safety),
            words_signature,
        }
    }

    /// The version in use.
    pub fn current(&self) -> Arc<Safety> {
        self.current.load_full()
    }

    pub fn config(&self) -> &SafetyConfig {
        &self.config
    }

    /// Builds everything again from the configured files and swaps it in.
    /// On any error the version in use keeps serving.
    ///
    /// # Errors
    /// As for `load`.
    pub fn reload(&self, store: &qunfa_store::Store) -> Result<Arc<Safety>, String> {
        let mut in_use = self.words_signature.lock().unwrap_or_else(|e| e.into_inner());
        // The version first: a change committed after it is seen next time.
        let signature = store.safety_words_signature().map_err(|e| format!("words added through the API: {e}"))?;
        let words = store.safety_words().map_err(|e| format!("words added through the API: {e}"))?;
        let safety = Arc::new(build(&self.config, &self.thresholds, &words)?);
        self.current.store(safety.clone());
        *in_use = signature;
        Ok(safety)
    }

    /// Reloads when words were added or removed through the API (on any
    /// node) since the version in use was built; true when it reloaded.
    ///
    /// # Errors
    /// As for `reload`.
    pub fn follow_words(&self, store: &qunfa_store::Store) -> Result<bool, String> {
        let signature = store.safety_words_signature().map_err(|e| format!("words added through the API: {e}"))?;
        if *self.words_signature.lock().unwrap_or_else(|e| e.into_inner()) == signature {
            return Ok(false);
        }
        self.reload(store)?;
        Ok(true)
    }

    /// Checks a text with the version in use.
    ///
    /// # Errors
    /// An empty or too long text.
    pub fn check(&self, text: &str, sample_key: u64) -> Result<Verdict, CheckError> {
        thread_local! {
            static SCRATCH: RefCell<CheckScratch> = RefCell::new(CheckScratch::default());
        }
        let safety = self.current.load();
        SCRATCH.with(|scratch| safety.check(text, sample_key, &mut scratch.borrow_mut()))
    }
}

fn build(
    config: &SafetyConfig,
    thresholds: &Thresholds,
    words: &[qunfa_store::safety::SafetyWord],
) -> Result<Safety, String> {
    let mut extra_words = Vec::new();
    let mut extra_allow = Vec::new();
    for w in words {
        if w.kind == "allow" {
            extra_allow.push(w.word.clone());
        } else {
            let severity = qunfa_safety::lexicon::Severity::parse(&w.severity)
                .ok_or_else(|| format!("word {:?}: unknown severity {:?}", w.word, w.severity))?;
            extra_words.push(qunfa_safety::sources::ExtraWord {
                category: w.category.clone(),
                word: w.word.clone(),
                severity,
            });
        }
    }
    let folder = match &config.lexicon_dir {
        Some(dir) => read_folder(dir)?,
        None => Vec::new(),
    };
    let built = sources::build(&Sources {
        defaults: !config.no_defaults,
        folder,
        extra_words: &extra_words,
        extra_allow: &extra_allow,
    })
    .map_err(|e| match &config.lexicon_dir {
        Some(dir) => format!("word library {}: {e}", dir.display()),
        None => format!("word library: {e}"),
    })?;
    let rules = match &config.rules_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("rules {}: {e}", path.display()))?;
            RuleSet::parse(&text).map_err(|e| format!("rules {}: {e}", path.display()))?
        }
        None => RuleSet::default_rules(),
    };
    let model = match &config.model_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("model {}: {e}", path.display()))?;
            Arc::new(Model::from_bytes(&bytes).map_err(|e| format!("model {}: {e}", path.display()))?)
        }
        None => default_model(),
    };
    Ok(Safety {
        lexicon: Arc::new(built.lexicon),
        domains: Arc::new(built.domains),
        rules: Arc::new(rules),
        model: Some(model),
        thresholds: thresholds.clone(),
    })
}

/// The files of a word folder (not its subfolders).
///
/// # Errors
/// A folder or file that cannot be read.
pub fn read_folder(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("word library {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("word library {}: {e}", dir.display()))?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).map_err(|e| format!("word library {}: {e}", path.display()))?;
        files.push((name, bytes));
    }
    files.sort();
    Ok(files)
}
