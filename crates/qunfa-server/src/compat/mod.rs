//! The WeChat-compatible API under `/cgi-bin/` (docs/compat.md): WeCom
//! (corpid/corpsecret) and Official Account (appid/secret) calls mapped onto
//! qunfa's own contacts, tags, departments, media and broadcasts. Every answer
//! is HTTP 200 with `{"errcode", "errmsg", …}` (but the Official Account's
//! token answer, bare as WeChat's); a send goes through the same
//! create → `submit` path as `POST /v1/broadcasts/{id}/send`, so every rule
//! applies and its verdict becomes the nearest WeChat errcode.
//!
//! Ids: WeCom userids, external_userids and OA openids are the contacts'
//! external ids; tag and department ids are qunfa's; a msgid is the
//! broadcast's id (of a broadcast sent through this API). Compatible calls act
//! as the member who set the credentials, and are observed like its logins.

pub mod callback;
pub mod crypto;
mod oa;
pub mod settings;
mod wecom;

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, Request, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use qunfa_audience::{AudienceSpec, Bitmap};
use qunfa_core::{
    broadcast::{BroadcastState, Priority},
    contact::Channel,
    message::{Content, RawContent},
    Code,
};
use qunfa_store::{
    broadcasts::{BroadcastRecord, NewBroadcast},
    compat::{CompatCredentials, CompatDraft, NewCompatSend},
    json::{audience_to_json, content_to_json},
    workspaces::Workspace,
    StoreError,
};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::{error::ApiError, extract::ClientInfo, routes::broadcasts::SendContext, AppState, Inner};

/// How long an access token lives (WeChat's `expires_in`).
pub const TOKEN_SECONDS: i64 = 7200;

/// The largest body of a compatible call: `media/upload`'s 20 MB file with
/// its multipart framing (the `/v1` API allows far more, for imports).
pub const MAX_BODY_BYTES: usize = 21 * 1024 * 1024;

/// A clientmsgid used again within this is "too fast" (45066), after it the original (45065).
const RETRY_TOO_FAST_MS: i64 = 60_000;

/// The compatible API's router (outside the `/v1` OpenAPI router).
pub fn router() -> Router<AppState> {
    Router::new().route("/cgi-bin/{*path}", get(cgi).post(cgi)).layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Which API a token or a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WeCom,
    Oa,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::WeCom => "wecom",
            Kind::Oa => "oa",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "wecom" => Some(Kind::WeCom),
            "oa" => Some(Kind::Oa),
            _ => None,
        }
    }
    fn token_prefix(self) -> &'static str {
        match self {
            Kind::WeCom => "qfw",
            Kind::Oa => "qfo",
        }
    }
}

/// A WeChat error answer.
#[derive(Debug)]
pub struct Wx {
    pub errcode: i64,
    pub errmsg: String,
    /// Fields the error answer carries besides errcode and errmsg (45065's msg_id).
    pub extra: Map<String, Value>,
}

pub fn wx(errcode: i64, errmsg: impl Into<String>) -> Wx {
    Wx { errcode, errmsg: errmsg.into(), extra: Map::new() }
}

type WxResult = Result<Value, Wx>;

impl From<StoreError> for Wx {
    fn from(e: StoreError) -> Self {
        from_api(ApiError::from(e), Kind::WeCom)
    }
}

/// The nearest WeChat errcode of a qunfa code, and its WeChat-style message.
pub fn errcode_of(code: Code, kind: Kind) -> (i64, &'static str) {
    use Code::*;
    match code {
        BadJson | InvalidContent => (47001, "data format error"),
        BadRequest | BadCursor => (40058, "invalid parameter"),
        Unauthenticated => (40014, "invalid access_token"),
        Forbidden | SelfApproval | ApprovalStage => (48001, "api unauthorized"),
        NotFound => (46004, "not found"),
        MediaNotFound => (40007, "invalid media_id"),
        TextEmpty => (44004, "empty content"),
        TextTooLong => (45002, "content size out of limit"),
        ContentTypeNotAllowed => (40008, "invalid message type"),
        InvalidExternalId => (40003, "invalid userid"),
        InvalidEmail => (60104, "invalid email"),
        InvalidPhone => (60103, "invalid mobile"),
        InvalidName => (40058, "invalid name"),
        InvalidTagPath | TagTooDeep | TagNested => (40072, "invalid tag name"),
        LimitTags | LimitTagMembers => (45056, "too many tags or tag members"),
        Duplicate => (60102, "already exists"),
        DepartmentNotAllowed | InvalidDepartment => (60003, "department not found"),
        AudienceEmpty | AudienceInvalid => match kind {
            Kind::WeCom => (81013, "user & party & tag all invalid"),
            Kind::Oa => (40003, "invalid openid"),
        },
        AudienceCombination | ApiBatchTooLarge | LimitRecipients => (45009, "reach max api daily quota limit"),
        LimitDailySends => (45028, "has no masssend quota"),
        TooFrequent => (45009, "api freq out of limit"),
        ContentBlocked => (87014, "risky content"),
        ContentDuplicate => (45009, "too many repeated sends of the same content"),
        AccountNew | LoginAbnormal | HealthSuspended | HealthSandbox => (48001, "api unauthorized"),
        ChannelUnavailable | ChannelNotConfigured => (48001, "api unauthorized"),
        RecallNotAllowed => (48002, "api forbidden"),
        RecallWindow => (40058, "the message can no longer be recalled"),
        Conflict | DuplicateClientMsgId | ApprovalDuplicate => (40058, "invalid state"),
        PayloadTooLarge => (40006, "invalid file size"),
        Unavailable => (-1, "system busy"),
        Internal => (-1, "system error"),
        _ => (40058, "invalid parameter"),
    }
}

/// A qunfa error as a WeChat error: the nearest errcode, and an errmsg that
/// names qunfa's code and says what is wrong.
pub fn from_api(e: ApiError, kind: Kind) -> Wx {
    let (errcode, base) = errcode_of(e.code, kind);
    wx(errcode, format!("{base}, hint: [{}] {}", e.code.as_str(), e.message))
}

/// The HTTP answer: 200 with JSON. A success gains `errcode` 0 and `errmsg`
/// "ok" unless it has its own, or is `bare` (the Official Account's token
/// answer, which has none at WeChat; wechatpy reads either).
fn answer(result: WxResult, bare: bool) -> Response {
    let body = match result {
        Ok(Value::Object(mut m)) => {
            if !bare && !m.contains_key("errcode") {
                let mut out = Map::new();
                out.insert("errcode".into(), json!(0));
                out.insert("errmsg".into(), json!("ok"));
                out.append(&mut m);
                m = out;
            }
            Value::Object(m)
        }
        Ok(other) => other,
        Err(e) => {
            let mut m = Map::new();
            m.insert("errcode".into(), json!(e.errcode));
            m.insert("errmsg".into(), json!(e.errmsg));
            m.extend(e.extra);
            Value::Object(m)
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn answer_err(e: Wx) -> Response {
    answer(Err(e), false)
}

/// The caller behind an access token.
pub struct Caller {
    pub kind: Kind,
    pub workspace: Workspace,
    pub creds: CompatCredentials,
    pub actor: String,
    /// The request's device and address (the abnormal-login rule sees them).
    pub client: ClientInfo,
}

impl Caller {
    fn ws(&self) -> i64 {
        self.workspace.id
    }
    fn tier(&self, s: &Inner) -> qunfa_core::policy::TierPolicy {
        s.policy.tier(self.workspace.kind).clone()
    }
    fn send_context(&self) -> SendContext {
        SendContext {
            kind: self.workspace.kind,
            plan: self.workspace.plan.clone(),
            actor: self.actor.clone(),
            member_id: self.creds.member_id,
        }
    }
}

/// A request: query parameters and the JSON body (an object; empty is `{}`).
pub struct Req {
    pub query: Vec<(String, String)>,
    pub body: Value,
    pub raw: Bytes,
    pub content_type: String,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
    /// A field of the body or, failing that, of the query.
    pub fn field(&self, names: &[&str]) -> Option<String> {
        str_of(&self.body, names).or_else(|| names.iter().find_map(|n| self.param(n).map(str::to_owned)))
    }
}

/// The first of `names` present in an object, as a string (numbers too).
pub fn str_of(v: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| match v.get(n) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(x)) => Some(x.to_string()),
        Some(Value::Bool(b)) => Some(if *b { "1".into() } else { "0".into() }),
        _ => None,
    })
}

/// The first of `names` present, as an integer (numeric strings too).
pub fn int_of(v: &Value, names: &[&str]) -> Option<i64> {
    str_of(v, names).and_then(|s| s.trim().parse::<i64>().ok())
}

/// A boolean field (true, 1, "1", "true").
pub fn bool_of(v: &Value, names: &[&str]) -> bool {
    names.iter().any(|n| match v.get(n) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(x)) => x.as_i64().unwrap_or(0) != 0,
        Some(Value::String(s)) => matches!(s.trim(), "1" | "true"),
        _ => false,
    })
}

/// A list field: a JSON array of strings or numbers, or a `|`-separated string.
pub fn list_of(v: &Value, names: &[&str]) -> Vec<String> {
    for n in names {
        match v.get(n) {
            Some(Value::Array(items)) => {
                return items
                    .iter()
                    .filter_map(|i| match i {
                        Value::String(s) => Some(s.trim().to_owned()),
                        Value::Number(x) => Some(x.to_string()),
                        _ => None,
                    })
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            Some(Value::String(s)) => {
                return s.split('|').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
            }
            Some(Value::Number(x)) => return vec![x.to_string()],
            _ => {}
        }
    }
    Vec::new()
}

async fn cgi(
    State(state): State<AppState>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    client: ClientInfo,
    request: Request,
) -> Response {
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = path.trim_matches('/').to_owned();
    // The Official Account's token answer is WeChat's: no errcode on success.
    let bare = path == "token";
    // Every call but the token's is authenticated from the query before its
    // body is read: an unauthenticated caller never makes the server read one.
    let caller = if matches!(path.as_str(), "gettoken" | "token") {
        None
    } else {
        let q = query.clone();
        match state.blocking(move |s| Ok(authenticate(s, &q, client))).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => return answer_err(e),
            Err(e) => return answer_err(from_api(e, Kind::WeCom)),
        }
    };
    let too_large = || wx(40006, format!("invalid file size: a request body is at most {MAX_BODY_BYTES} bytes"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return answer_err(too_large());
    }
    let raw = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(raw) => raw,
        Err(_) => return answer_err(too_large()),
    };
    let result = state
        .blocking(move |s| {
            let body = if content_type.starts_with("multipart/") || raw.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Map::new())
            } else {
                match serde_json::from_slice::<Value>(&raw) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => return Ok(Err(wx(47001, "data format error: the body is not a JSON object"))),
                }
            };
            let req = Req { query, body, raw, content_type };
            Ok(route(s, &path, caller.as_ref(), &req))
        })
        .await
        .unwrap_or_else(|e| Err(from_api(e, Kind::WeCom)));
    answer(result, bare)
}

fn route(s: &Inner, path: &str, caller: Option<&Caller>, req: &Req) -> WxResult {
    let caller = match (path, caller) {
        ("gettoken", _) => return token(s, Kind::WeCom, req),
        ("token", _) => return token(s, Kind::Oa, req),
        (_, Some(c)) => c,
        (_, None) => return Err(wx(41001, "access_token missing")),
    };
    match caller.kind {
        Kind::WeCom => wecom::route(s, caller, path, req),
        Kind::Oa => oa::route(s, caller, path, req),
    }
}

fn new_token(kind: Kind) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let body: String = (0..96).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format!("{}{body}", kind.token_prefix())
}

/// `gettoken?corpid=&corpsecret=` and `token?grant_type=client_credential&appid=&secret=`.
fn token(s: &Inner, kind: Kind, req: &Req) -> WxResult {
    let (id_name, secret_name) = match kind {
        Kind::WeCom => ("corpid", "corpsecret"),
        Kind::Oa => ("appid", "secret"),
    };
    if kind == Kind::Oa && req.field(&["grant_type"]).as_deref() != Some("client_credential") {
        return Err(wx(40002, "invalid grant_type"));
    }
    let id = req.field(&[id_name]).ok_or_else(|| wx(41002, format!("{id_name} missing")))?;
    let secret = req.field(&[secret_name]).ok_or_else(|| wx(41004, format!("{secret_name} missing")))?;
    let creds = s.store.compat_app(kind.as_str(), &id)?.ok_or_else(|| wx(40013, format!("invalid {id_name}")))?;
    if !crate::extract::constant_time_eq(qunfa_store::secret_hash(&secret).as_bytes(), creds.secret_hash.as_bytes()) {
        return Err(wx(
            40001,
            match kind {
                Kind::WeCom => "invalid credential: the corpsecret is wrong",
                Kind::Oa => "invalid credential: the AppSecret is wrong",
            },
        ));
    }
    let token = new_token(kind);
    let now = s.now();
    s.store.issue_compat_token(
        creds.workspace_id,
        kind.as_str(),
        &qunfa_store::secret_hash(&token),
        now + TOKEN_SECONDS * 1000,
        now,
    )?;
    Ok(match kind {
        Kind::WeCom => json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": TOKEN_SECONDS}),
        // The Official Account answers a token without errcode (answer() keeps it bare).
        Kind::Oa => json!({"access_token": token, "expires_in": TOKEN_SECONDS}),
    })
}

/// 41001 without a token, 42001 when it expired; an unknown token is 40014
/// (WeCom, or a token not even of the Official Account's shape) or 40001
/// (a well-formed Official Account token that is not, or no longer, valid).
fn authenticate(s: &Inner, query: &[(String, String)], client: ClientInfo) -> Result<Caller, Wx> {
    let token = query
        .iter()
        .find(|(k, v)| k == "access_token" && !v.is_empty())
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| wx(41001, "access_token missing"))?;
    let Some((ws, kind, expires_at)) = s.store.compat_token(&qunfa_store::secret_hash(token))? else {
        let oa_shaped = token.len() == 99 && token.starts_with(Kind::Oa.token_prefix());
        return Err(if oa_shaped {
            wx(40001, "invalid credential, access_token is invalid or not latest")
        } else {
            wx(40014, "invalid access_token")
        });
    };
    if expires_at <= s.now() {
        return Err(wx(42001, "access_token expired"));
    }
    let kind = Kind::parse(&kind).ok_or_else(|| wx(40014, "invalid access_token"))?;
    let creds = s.store.compat_credentials_of(ws, kind.as_str())?.ok_or_else(|| wx(40014, "invalid access_token"))?;
    let workspace = s.store.workspace(ws)?;
    let actor = format!("member:{}/compat:{}", creds.member_id, kind.as_str());
    Ok(Caller { kind, workspace, creds, actor, client })
}

/// What a compatible send asks for.
pub struct SendRequest {
    pub raw: RawContent,
    pub audience: AudienceSpec,
    pub client_msg_id: Option<String>,
    pub priority: Priority,
    /// Recorded with the send (`compat_sends.kind`).
    pub send_kind: &'static str,
    /// The duplicate key and its interval in ms (WeCom `enable_duplicate_check`).
    pub dup: Option<(String, i64)>,
    pub sender: Option<String>,
    pub callback: bool,
}

/// Creates the broadcast with its `compat_sends` row (one transaction) and
/// submits it through qunfa's one send path. A duplicate (same key within
/// its interval) answers the first send; a clientmsgid used again answers
/// 45066/45065 with the original msg_id. A draft that was never sent (its
/// submission refused) is submitted again by the retry instead: a refusal
/// never blocks a clientmsgid or a duplicate key.
pub fn send(s: &Inner, caller: &Caller, req: SendRequest) -> Result<BroadcastRecord, Wx> {
    let kind = caller.kind;
    let api = |e: ApiError| from_api(e, kind);
    let tier = caller.tier(s);
    let content = Content::parse(&req.raw, tier.text_max_chars)
        .map_err(|code| api(crate::routes::broadcasts::content_error(code, &req.raw, tier.text_max_chars)))?;
    let signed = crate::routes::recall::signed_content(s, &caller.workspace, &content).map_err(api)?;
    for media in content.media() {
        if !s.store.media_exists(caller.ws(), media)? {
            return Err(wx(40007, format!("invalid media_id: {} was not uploaded", media.as_str())));
        }
    }
    // A send from a new device or network is an abnormal login, as on /v1.
    crate::routes::security::observe(s, caller.ws(), caller.creds.member_id, &caller.client).map_err(api)?;
    let content_json = content_to_json(&content.to_raw());
    let audience_json = audience_to_json(&req.audience);
    let request_hash = hex::encode(sha2::Sha256::digest(format!("{content_json}\n{audience_json}\ncompat").as_bytes()));
    let cid = req.client_msg_id.clone();
    let new = NewBroadcast {
        content_json: content_to_json(&signed),
        audience_json,
        channels: vec![Channel::Inbox],
        priority: req.priority,
        client_msg_id: req.client_msg_id,
        request_hash,
        ttl_ms: None,
        fallback: Vec::new(),
    };
    let now = s.now();
    let row = NewCompatSend {
        kind: req.send_kind,
        dup: req.dup.as_ref().map(|(key, interval)| (key.as_str(), now - interval)),
        sender: req.sender.as_deref(),
        callback: req.callback,
    };
    let ctx = caller.send_context();
    let created = s.store.create_compat_broadcast(caller.ws(), caller.creds.member_id, &new, &row, &caller.actor, now);
    let draft = match created {
        Ok(d) => d,
        // The clientmsgid is another request's (other content), which was submitted.
        Err(StoreError::Rejected { code: Code::DuplicateClientMsgId, .. }) => {
            let cid = cid.unwrap_or_default();
            return Err(match s.store.broadcast_by_client_msg_id(caller.ws(), &cid)? {
                Some((id, _)) => client_msg_id_used(s, &s.store.broadcast(caller.ws(), id)?),
                None => wx(45066, "same clientmsgid retry too fast, retry after a minute"),
            });
        }
        Err(e) => return Err(e.into()),
    };
    // Found by its duplicate key (a WeCom send), else by its clientmsgid.
    let duplicate = req.dup.is_some();
    // Submits a draft; when that fails because a racing request (the same
    // duplicate key or clientmsgid) submitted it first, answers that send.
    let submit = |b: &BroadcastRecord| match crate::routes::broadcasts::submit(s, &ctx, b, None) {
        Ok(b) => Ok(b),
        Err(e) => {
            let now_b = s.store.broadcast(caller.ws(), b.id)?;
            match (now_b.state, duplicate) {
                // Still never sent: this refusal is the answer.
                (BroadcastState::Draft, _) => Err(api(e)),
                (_, true) => Ok(now_b),
                (_, false) => Err(client_msg_id_used(s, &now_b)),
            }
        }
    };
    match draft {
        CompatDraft::Created(b) => submit(&b),
        // Never sent (refused, or a racing request is submitting it now): submit it again.
        CompatDraft::Duplicate(b) | CompatDraft::SameClientMsgId(b) if b.state == BroadcastState::Draft => submit(&b),
        CompatDraft::Duplicate(b) => Ok(b),
        CompatDraft::SameClientMsgId(b) => Err(client_msg_id_used(s, &b)),
    }
}

/// The answer to a clientmsgid used by a submitted send: 45066 within a
/// minute of it, later 45065; both with its msg_id.
fn client_msg_id_used(s: &Inner, b: &BroadcastRecord) -> Wx {
    let mut e = if s.now() - b.created_at < RETRY_TOO_FAST_MS {
        wx(45066, "same clientmsgid retry too fast, retry after a minute")
    } else {
        wx(45065, format!("clientmsgid exist: the mass send of msg_id {}", b.id))
    };
    e.extra.insert("msg_id".into(), json!(b.id));
    e
}

/// The members of several tags and departments, now.
pub fn resolve_union(s: &Inner, ws: i64, specs: &[AudienceSpec]) -> Result<Bitmap, Wx> {
    let mut all = Bitmap::new();
    for spec in specs {
        let b = s.store.resolve_audience_at(ws, spec, s.now())?;
        all.or_inplace(&b);
    }
    Ok(all)
}

/// A broadcast sent through this API by a msgid (its id), or the errcode
/// of an unknown one: a broadcast made through `/v1` is not a msgid here.
pub fn broadcast_of(s: &Inner, caller: &Caller, msgid: Option<String>) -> Result<BroadcastRecord, Wx> {
    let msgid = msgid.ok_or_else(|| wx(41014, "msgid missing"))?;
    let id = msgid.trim().trim_start_matches("msg").parse::<i64>().map_err(|_| wx(40058, "invalid msgid"))?;
    if s.store.compat_send(caller.ws(), id)?.is_none() {
        return Err(wx(40058, format!("invalid msgid {msgid}")));
    }
    match s.store.broadcast(caller.ws(), id) {
        Ok(b) => Ok(b),
        Err(StoreError::NotFound) => Err(wx(40058, format!("invalid msgid {msgid}"))),
        Err(e) => Err(e.into()),
    }
}

/// Recalls a broadcast under the tier's recall rules, through the one
/// recall of `POST /v1/broadcasts/{id}/recall` (routes/recall.rs), as the
/// member who set the credentials.
pub fn recall(s: &Inner, caller: &Caller, b: &BroadcastRecord) -> Result<(), Wx> {
    let role = s.store.member(caller.ws(), caller.creds.member_id)?.role;
    let who = crate::routes::recall::Recaller {
        kind: caller.workspace.kind,
        role,
        member_id: caller.creds.member_id,
        actor: &caller.actor,
    };
    crate::routes::recall::recall_now(s, &who, caller.ws(), b.id).map_err(|e| from_api(e, caller.kind))?;
    Ok(())
}

/// `cancel_groupmsg_send`: stops what has not been sent yet — a send held
/// for approval is withdrawn (as its sender's `reject`), a sending one is
/// paused (its remaining batches wait; `POST /v1/broadcasts/{id}/resume`
/// continues it). Nothing delivered is taken back (that is recall); a send
/// with nothing left to send answers 0 and is left as it is.
pub fn cancel(s: &Inner, caller: &Caller, b: &BroadcastRecord) -> Result<(), Wx> {
    let (ws, now) = (caller.ws(), s.now());
    let result = match b.state {
        BroadcastState::PendingApproval => {
            s.store.reject_broadcast(ws, b.id, "cancelled through cancel_groupmsg_send", true, None, &caller.actor, now)
        }
        BroadcastState::Sending => s.store.pause_broadcast(ws, b.id, &caller.actor, now),
        _ => Ok(()),
    };
    match result {
        Ok(()) => {
            s.engine.wake();
            Ok(())
        }
        // It moved on meanwhile (completed, or approved and sending): as it is now.
        Err(StoreError::Rejected { code: Code::Conflict, .. }) => {
            let now_b = s.store.broadcast(ws, b.id)?;
            if now_b.state != b.state && now_b.state != BroadcastState::Draft {
                return cancel(s, caller, &now_b);
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The OA status of a broadcast.
pub fn mass_status(b: &BroadcastRecord) -> &'static str {
    if b.recalled_at.is_some() {
        return "DELETE";
    }
    match b.state {
        BroadcastState::Completed if b.n_failed > 0 && b.n_delivered + b.n_sent == 0 => "SEND_FAIL",
        BroadcastState::Completed => "SEND_SUCCESS",
        // A draft was never sent: its submission was refused (a retry with
        // the same clientmsgid or duplicate key submits it again).
        BroadcastState::Cancelled | BroadcastState::Blocked | BroadcastState::Draft => "SEND_FAIL",
        _ => "SENDING",
    }
}

/// An audience expression term for a tag (by path) or a department (by id).
pub fn tag_term(path: &str) -> String {
    format!("tag:\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_map_to_the_nearest_errcode() {
        for (code, kind, errcode) in [
            (Code::ContentBlocked, Kind::Oa, 87014),
            (Code::LimitDailySends, Kind::Oa, 45028),
            (Code::LimitDailySends, Kind::WeCom, 45028),
            (Code::TextTooLong, Kind::WeCom, 45002),
            (Code::AudienceEmpty, Kind::WeCom, 81013),
            (Code::AudienceEmpty, Kind::Oa, 40003),
            (Code::MediaNotFound, Kind::WeCom, 40007),
            (Code::RecallNotAllowed, Kind::WeCom, 48002),
            (Code::Internal, Kind::Oa, -1),
        ] {
            assert_eq!(errcode_of(code, kind).0, errcode, "{code:?} ({kind:?})");
        }
        // Every code has an errcode that is not success, and a message.
        for code in Code::ALL {
            let (errcode, message) = errcode_of(*code, Kind::WeCom);
            assert!(errcode != 0 && !message.is_empty(), "{code:?}");
        }
        let e = from_api(ApiError::code(Code::ContentBlocked), Kind::Oa);
        assert!(e.errmsg.starts_with("risky content, hint: [QF-CONTENT-BLOCKED] "), "{}", e.errmsg);
    }

    #[test]
    fn lenient_fields() {
        let v = serde_json::json!({"a": 5, "b": "7", "c": "x|y| |z", "d": [1, "2"], "e": true, "f": "1"});
        assert_eq!((int_of(&v, &["a"]), int_of(&v, &["b"]), int_of(&v, &["zz", "b"])), (Some(5), Some(7), Some(7)));
        assert_eq!(list_of(&v, &["c"]), ["x", "y", "z"]);
        assert_eq!(list_of(&v, &["d"]), ["1", "2"]);
        assert!(bool_of(&v, &["e"]) && bool_of(&v, &["f"]) && !bool_of(&v, &["a2"]));
    }
}
