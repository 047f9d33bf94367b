//! A small W3C WebDriver client for the console's browser tests: starts
//! Debian's `chromedriver` on a loopback port, opens a headless Chromium
//! session, and offers the few commands the tests need (navigate, find,
//! click, type, read text, run a script, screenshot).
//!
//! The driver and browser are found at `QUNFA_CHROMEDRIVER` /
//! `QUNFA_CHROMIUM`, else `/usr/bin/chromedriver` and `/usr/bin/chromium`
//! (Debian's `chromium-driver` and `chromium` packages; `.ci/run` installs them).

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{json, Value};

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session. Dropping it (a failed test too) ends the session, so
/// Chromium quits, and kills the driver.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    /// Killed on drop (`kill_on_drop`).
    _driver: tokio::process::Child,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A plain blocking `DELETE /session/ID` (no runtime here): the driver
        // closes Chromium; then `kill_on_drop` stops the driver.
        use std::io::{Read, Write};
        let Some(rest) = self.session.strip_prefix("http://") else { return };
        let Some((host, path)) = rest.split_once('/') else { return };
        if let Ok(mut conn) = std::net::TcpStream::connect(host) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let request =
                format!("DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if conn.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = conn.read_to_end(&mut answer);
            }
        }
    }
}

/// An element of the page.
#[derive(Clone, Debug)]
pub struct Element(String);

/// A temporary browser profile folder, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_of(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile,
    /// Chinese first (`--lang=zh-CN`) unless `lang` says otherwise.
    ///
    /// # Errors
    /// When the driver is missing or the session cannot be opened.
    pub async fn launch(lang: &str) -> Result<Browser, String> {
        let driver_path = path_of("QUNFA_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = path_of("QUNFA_CHROMIUM", "/usr/bin/chromium");
        if !driver_path.exists() || !chromium.exists() {
            return Err(format!(
                "{} or {} is missing: install Debian's chromium and chromium-driver packages",
                driver_path.display(),
                chromium.display()
            ));
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", driver_path.display()))?;
        let profile = TempDir(std::env::temp_dir().join(format!("qunfa-chromium-{}-{port}", std::process::id())));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| e.to_string())?;
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await.ok();
            if let Some(r) = ready {
                if r.json::<Value>().await.ok().and_then(|v| v["value"]["ready"].as_bool()) == Some(true) {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err("chromedriver did not become ready within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Flags: nothing that talks to the network on its own (this
        // machine's network is closed), and no sandbox as root (Chromium
        // refuses to start otherwise).
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        };
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--lang={lang}"),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        if root {
            args.push("--no-sandbox".to_owned());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args, "prefs": {"intl.accept_languages": lang}}
        }}});
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let id = answer["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session: {}", answer["value"]["message"]))?
            .to_owned();
        Ok(Browser { http, session: format!("{base}/session/{id}"), _driver: driver, _profile: profile })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        // Every POST carries a JSON body, empty or not.
        req = req.json(&body.unwrap_or_else(|| json!({})));
        let answer: Value =
            req.send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| format!("{path}: {e}"))?;
        if let Some(error) = answer["value"]["error"].as_str() {
            return Err(format!("{path}: {error}: {}", answer["value"]["message"]));
        }
        Ok(answer["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let answer: Value = self
            .http
            .get(format!("{}{path}", self.session))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if let Some(error) = answer["value"]["error"].as_str() {
            return Err(format!("{path}: {error}: {}", answer["value"]["message"]));
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.post("/url", json!({"url": url})).await.map(drop)
    }

    /// The current address.
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn url(&self) -> Result<String, String> {
        Ok(self.get("/url").await?.as_str().unwrap_or_default().to_owned())
    }

    /// Resizes the window (a phone-sized screen: 390 × 844).
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn window(&self, width: u32, height: u32) -> Result<(), String> {
        self.post("/window/rect", json!({"width": width, "height": height})).await.map(drop)
    }

    /// Every element matching a CSS selector now.
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        let found = self.post("/elements", json!({"using": "css selector", "value": css})).await?;
        Ok(found
            .as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned()))).collect())
            .unwrap_or_default())
    }

    /// Waits up to `timeout` for an element matching `css` (and, when
    /// `text` is given, whose text contains it).
    ///
    /// # Errors
    /// When none appears in time.
    pub async fn wait(&self, css: &str, text: Option<&str>, timeout: Duration) -> Result<Element, String> {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            for el in self.find_all(css).await? {
                let Ok(t) = self.text(&el).await else { continue };
                if text.is_none_or(|want| t.contains(want)) {
                    return Ok(el);
                }
                last = t;
            }
            if started.elapsed() > timeout {
                let page =
                    self.execute("return document.body.innerText.slice(0, 3000)", Vec::new()).await.unwrap_or_default();
                return Err(format!(
                    "no {css}{} within {timeout:?} (last text {last:?}) at {}; the page reads:\n{}",
                    text.map(|t| format!(" with text {t:?}")).unwrap_or_default(),
                    self.url().await.unwrap_or_default(),
                    page.as_str().unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until exactly `n` elements match `css`.
    ///
    /// # Errors
    /// When the count is still different after `timeout`.
    pub async fn wait_count(&self, css: &str, n: usize, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let found = self.find_all(css).await?.len();
            if found == n {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(format!("{found} × {css} after {timeout:?}, expected {n}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until nothing matches `css`.
    ///
    /// # Errors
    /// When something still matches after `timeout`.
    pub async fn wait_gone(&self, css: &str, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        while !self.find_all(css).await?.is_empty() {
            if started.elapsed() > timeout {
                return Err(format!("{css} still there after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits for an element matching `css` (and `text`) and clicks it; an
    /// element replaced between finding and clicking is looked up again.
    ///
    /// # Errors
    /// When none appears in time, or the click fails otherwise.
    pub async fn click_on(&self, css: &str, text: Option<&str>, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let el = self.wait(css, text, timeout).await?;
            match self.click(&el).await {
                Err(e) if e.contains("stale element") && started.elapsed() < timeout => continue,
                other => return other,
            }
        }
    }

    /// Clicks an element.
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn click(&self, el: &Element) -> Result<(), String> {
        self.post(&format!("/element/{}/click", el.0), json!({})).await.map(drop)
    }

    /// Types into an element (after clearing it when `clear`).
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn type_into(&self, el: &Element, text: &str, clear: bool) -> Result<(), String> {
        if clear {
            self.post(&format!("/element/{}/clear", el.0), json!({})).await?;
        }
        self.post(&format!("/element/{}/value", el.0), json!({"text": text})).await.map(drop)
    }

    /// An element's visible text.
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn text(&self, el: &Element) -> Result<String, String> {
        Ok(self.get(&format!("/element/{}/text", el.0)).await?.as_str().unwrap_or_default().to_owned())
    }

    /// An element property (`value`, `checked`…).
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn property(&self, el: &Element, name: &str) -> Result<Value, String> {
        self.get(&format!("/element/{}/property/{name}", el.0)).await
    }

    /// Runs `script` in the page (`arguments[0]`… are `args`) and returns its value.
    ///
    /// # Errors
    /// WebDriver or script errors.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// A PNG of the viewport.
    ///
    /// # Errors
    /// WebDriver errors.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        let b64 = self.get("/screenshot").await?;
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default()).map_err(|e| e.to_string())
    }

    /// Ends the session (Chromium quits) and the driver.
    pub async fn quit(self) {
        // Drop does it, blocking for the moment Chromium takes to close.
        tokio::task::spawn_blocking(move || drop(self)).await.ok();
    }
}
