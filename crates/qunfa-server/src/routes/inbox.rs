//! The recipient's side: list the inbox, open a message (read receipt), reply.
//! These routes take an inbox token, never a workspace key.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, OnceLock},
};

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use qunfa_core::message::RawContent;
use qunfa_store::{inbox::InboxItem, Backend};
use serde::ser::{Serialize, SerializeSeq, SerializeStruct, Serializer};

use super::{contact_id, parse_id, PageQuery};
use crate::{
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, InboxAuth},
    wire::*,
    AppState, Inner,
};

fn item_wire(i: InboxItem) -> InboxItemWire {
    let text = i.body.or_else(|| {
        let c = &i.content;
        c.text.clone().or_else(|| c.caption.clone()).or_else(|| c.description.clone()).or_else(|| c.html.clone())
    });
    InboxItemWire {
        message_id: i.broadcast_id.to_string(),
        from: i.sender_name,
        content: i.content.into(),
        text,
        delivered_at: ts_opt(i.delivered_at),
        read_at: ts_opt(i.read_at),
        replied_at: ts_opt(i.replied_at),
        recalled: i.recalled,
    }
}

/// Gives the recipient their own tracked URL wherever a message's text (or
/// link card) carries the URL of one of its broadcast's tracked links on the
/// inbox channel (docs/measurement.md). `recipient` is asked only when there
/// are such links.
fn track_links(
    s: &Inner,
    items: &mut [InboxItem],
    recipient: impl FnOnce() -> Result<u32, ApiError>,
) -> Result<(), ApiError> {
    let ids: Vec<i64> = items.iter().filter(|i| !i.recalled).map(|i| i.broadcast_id).collect();
    let links = s.store.tracked_links_of(&ids, "inbox")?;
    if links.is_empty() {
        return Ok(());
    }
    let idx = recipient()?;
    for item in items.iter_mut().filter(|i| !i.recalled) {
        let mine: Vec<(String, String)> = links
            .iter()
            .filter(|(b, _, _)| *b == item.broadcast_id)
            .map(|(_, url, short)| (url.clone(), super::measure::recipient_link(s, short, idx, "inbox")))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let c = &mut item.content;
        for text in [&mut item.body, &mut c.text, &mut c.caption, &mut c.description, &mut c.html, &mut c.url]
            .into_iter()
            .flatten()
        {
            if let std::borrow::Cow::Owned(t) = qunfa_core::sign::rewrite_links(text, &mine) {
                *text = t;
            }
        }
    }
    Ok(())
}

/// `Page<InboxItemWire>` as JSON, written from the items as read ([`item_wire`]
/// would copy every text of a page into wire values first, only to serialize
/// them). The bytes are those of the wire types: `tests` holds the two together.
struct PageJson<'a> {
    items: &'a [InboxItem],
    next_cursor: Option<i64>,
}

impl Serialize for PageJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut page = serializer.serialize_struct("Page", 2)?;
        page.serialize_field("items", &ItemsJson(self.items))?;
        page.serialize_field("next_cursor", &self.next_cursor.map(|c| c.to_string()))?;
        page.end()
    }
}

struct ItemsJson<'a>(&'a [InboxItem]);

impl Serialize for ItemsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut items = serializer.serialize_seq(Some(self.0.len()))?;
        for i in self.0 {
            items.serialize_element(&ItemJson(i))?;
        }
        items.end()
    }
}

/// [`InboxItemWire`], field for field.
struct ItemJson<'a>(&'a InboxItem);

impl Serialize for ItemJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (i, c) = (self.0, &self.0.content);
        let text = i
            .body
            .as_deref()
            .or(c.text.as_deref())
            .or(c.caption.as_deref())
            .or(c.description.as_deref())
            .or(c.html.as_deref());
        let mut item = serializer.serialize_struct("InboxItemWire", 8)?;
        item.serialize_field("message_id", &i.broadcast_id.to_string())?;
        item.serialize_field("from", &i.sender_name)?;
        item.serialize_field("content", &ContentJson(c))?;
        item.serialize_field("text", &text)?;
        item.serialize_field("delivered_at", &ts_opt(i.delivered_at))?;
        item.serialize_field("read_at", &ts_opt(i.read_at))?;
        item.serialize_field("replied_at", &ts_opt(i.replied_at))?;
        item.serialize_field("recalled", &i.recalled)?;
        item.end()
    }
}

/// [`ContentWire`], field for field: `type`, then the fields present.
struct ContentJson<'a>(&'a RawContent);

impl Serialize for ContentJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut content = serializer.serialize_struct("ContentWire", 12)?;
        content.serialize_field("type", &c.content_type)?;
        for (name, value) in [
            ("text", &c.text),
            ("media_id", &c.media_id),
            ("caption", &c.caption),
            ("url", &c.url),
            ("title", &c.title),
            ("description", &c.description),
            ("appid", &c.appid),
            ("pagepath", &c.pagepath),
            ("thumb_media_id", &c.thumb_media_id),
            ("filename", &c.filename),
            ("html", &c.html),
        ] {
            match value {
                Some(v) => content.serialize_field(name, v)?,
                None => content.skip_field(name)?,
            }
        }
        content.end()
    }
}

/// The recipient's messages, newest first.
///
/// The whole answer is made where the page is read ([`read_inbox`]): the token
/// is looked up in the statement that reads the page, and the JSON is written
/// from the rows' values on that thread; the async side sends the body.
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", params(PageQuery),
    responses((status = 200, body = Page<InboxItemWire>), (status = 401, body = ErrorBody)))]
pub async fn list_inbox(
    State(state): State<AppState>,
    auth: InboxAuth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Response> {
    let (limit, before) = (q.limit()?, q.cursor_i64()?);
    let body = read_inbox(&state, move |s| {
        let mut rows = s.store.inbox_of_token(auth.token(), before, limit)?.ok_or_else(InboxAuth::unknown)?;
        track_links(s, &mut rows, || Ok(auth.recipient(&s.store)?.1))?;
        let next_cursor = (rows.len() == limit).then(|| rows.last().map(|i| i.broadcast_id)).flatten();
        // A message is about 260 bytes: one allocation for most pages.
        let mut body = Vec::with_capacity(64 + 320 * rows.len());
        serde_json::to_writer(&mut body, &PageJson { items: &rows, next_cursor })
            .map_err(|e| ApiError::internal(&e))?;
        Ok(body)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// One message (does not mark it read; POST …/read does).
#[utoipa::path(get, path = "/v1/inbox/{message_id}", tag = "inbox", params(("message_id" = String, Path)),
    responses((status = 200, body = InboxItemWire), (status = 404, body = ErrorBody)))]
pub async fn get_message(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<InboxItemWire>> {
    let id = parse_id(&id)?;
    let item = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            let mut item = [s.store.inbox_message(ws, idx, id)?];
            track_links(s, &mut item, || Ok(idx))?;
            let [item] = item;
            Ok(item)
        })
        .await?;
    Ok(Json(item_wire(item)))
}

/// Read receipt: the first call marks the message read and counts it.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/read", tag = "inbox", params(("message_id" = String, Path)),
    responses((status = 200, body = ReadResponse), (status = 404, body = ErrorBody)))]
pub async fn read_message(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<ReadResponse>> {
    let id = parse_id(&id)?;
    let first_read = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            Ok(s.store.mark_read(ws, idx, id, s.now())?)
        })
        .await?;
    Ok(Json(ReadResponse { first_read }))
}

/// Reply to a message.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/reply", tag = "inbox", params(("message_id" = String, Path)), request_body = ReplyRequest,
    responses((status = 201, body = ReplyResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reply_message(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReplyRequest>,
) -> ApiResult<(StatusCode, Json<ReplyResponse>)> {
    let id = parse_id(&id)?;
    let (ws, r) = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            Ok((ws, s.store.reply(ws, idx, id, &req.text, s.now())?))
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ReplyResponse {
            id: r.id.to_string(),
            contact_id: contact_id(ws, r.contact_idx),
            text: r.text,
            created_at: ts(r.created_at),
        }),
    ))
}

/// Report a message (spam, fraud, harassment, illegal, other). Reports count
/// against the sender; integrators get a `report.received` event.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/report", tag = "inbox", params(("message_id" = String, Path)), request_body = ReportRequest,
    responses((status = 200, body = ReportResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn report_message(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReportRequest>,
) -> ApiResult<Json<ReportResponse>> {
    let id = parse_id(&id)?;
    let first_report = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            Ok(s.store.report(ws, idx, id, &req.reason, s.now())?)
        })
        .await?;
    Ok(Json(ReportResponse { first_report }))
}

/// Block the sender of a message: nothing more from that member reaches
/// this recipient, on any channel (their later sends give a `filtered`
/// record, `QF-BLOCKED-SENDER`). A second block changes nothing.
#[utoipa::path(post, path = "/v1/inbox/{message_id}/block", tag = "inbox", params(("message_id" = String, Path)),
    responses((status = 200, body = BlockResponse), (status = 404, body = ErrorBody)))]
pub async fn block_sender(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<BlockResponse>> {
    set_block(state, auth, &id, true).await
}

/// Lift the block of a message's sender (only the recipient can).
#[utoipa::path(delete, path = "/v1/inbox/{message_id}/block", tag = "inbox", params(("message_id" = String, Path)),
    responses((status = 200, body = BlockResponse), (status = 404, body = ErrorBody)))]
pub async fn unblock_sender(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<BlockResponse>> {
    set_block(state, auth, &id, false).await
}

/// Blocks or unblocks the sender of a message for the token's recipient.
async fn set_block(state: AppState, auth: InboxAuth, id: &str, block: bool) -> ApiResult<Json<BlockResponse>> {
    let id = parse_id(id)?;
    let changed = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            let now = s.now();
            Ok(if block {
                s.store.block_sender(ws, idx, id, now)?
            } else {
                s.store.unblock_sender(ws, idx, id, now)?
            })
        })
        .await?;
    Ok(Json(BlockResponse { blocked: block, changed }))
}

/// Forward a message (also counts as reading it): each forward gets a share
/// record; a recipient's first forward counts in the broadcast's `forwarded`.
/// A recalled message cannot be forwarded (`QF-RECALLED`).
#[utoipa::path(post, path = "/v1/inbox/{message_id}/forward", tag = "inbox", params(("message_id" = String, Path)), request_body = ForwardRequest,
    responses((status = 201, body = ForwardResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn forward_message(
    State(state): State<AppState>,
    auth: InboxAuth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ForwardResponse>)> {
    let id = parse_id(&id)?;
    let req: ForwardRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ForwardRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let share = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            Ok(s.store.forward(ws, idx, id, req.to.as_deref().unwrap_or("other"), s.now())?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ForwardResponse { share_id: share.share_id.to_string(), first_forward: share.first_forward }),
    ))
}

/// Stop mass messages on a channel (the recipient's own choice: only the
/// recipient can undo it).
#[utoipa::path(post, path = "/v1/inbox/unsubscribe", tag = "inbox", request_body = InboxUnsubscribeRequest,
    responses((status = 200, body = UnsubscribeResponse), (status = 400, body = ErrorBody)))]
pub async fn unsubscribe(
    State(state): State<AppState>,
    auth: InboxAuth,
    ApiJson(req): ApiJson<InboxUnsubscribeRequest>,
) -> ApiResult<Json<UnsubscribeResponse>> {
    let channel = qunfa_core::contact::Channel::parse(&req.channel)
        .map_err(|code| ApiError::new(code, format!("unknown channel {:?}", req.channel)))?;
    let changed = state
        .blocking(move |s| {
            let (ws, idx) = auth.recipient(&s.store)?;
            Ok(s.store.unsubscribe(ws, idx, channel, s.now())?)
        })
        .await?;
    Ok(Json(UnsubscribeResponse { channel: channel.as_str().into(), changed }))
}

/// Runs a short inbox read on one of the [`InboxReaders`] threads (SQLite), or
/// on tokio's blocking pool (PostgreSQL, where a read mostly waits for the
/// network and as many run at once as the connection pool allows).
///
/// # Errors
/// `f`'s error; a panic in `f` is an internal error.
async fn read_inbox<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Inner) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let readers = match state.store.backend() {
        Backend::Sqlite => InboxReaders::get(),
        Backend::Postgres => None,
    };
    let Some(readers) = readers else { return state.blocking(f).await };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let state = state.clone();
    readers.submit(Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&state)));
        // The request holds its own handle until the answer arrives, so the
        // application is never dropped on a reader thread.
        drop(state);
        // The request may have gone (client disconnected): nothing to do.
        let _ = answer.send(result);
    }));
    match answered.await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ApiError::internal(&"an inbox read panicked")),
        Err(_) => Err(ApiError::internal(&"an inbox read was dropped")),
    }
}

type ReadJob = Box<dyn FnOnce() + Send>;

/// A few threads that do nothing but recipients' inbox reads on SQLite, the
/// busiest read path, taking them from one queue.
///
/// Why not `spawn_blocking`: a page is read and rendered in about 40 µs of
/// CPU, and tokio's blocking pool wakes an idle thread for every task — with
/// 32 requests in flight, 32 threads that each wake, queue for one of the
/// pool's database connections and sleep again. On two cores those wake-ups
/// and context switches cost more CPU than the reads (scripts/bench-inbox.sh,
/// 2 cores: 100–170 µs of server CPU per request that way, about 70 µs with
/// these threads doing the same work). These threads keep taking reads
/// while there are any, sleep only when the queue is empty and are woken only
/// then. They live as long as the process: one more than there are cores (at
/// least 3, so that a read waiting for the disk leaves the cores busy; at most
/// 8, the default number of database connections).
///
/// Only short reads belong here: a write would keep readers waiting behind
/// the writer lock and its fsync.
struct InboxReaders {
    queue: Mutex<ReadQueue>,
    work: Condvar,
}

struct ReadQueue {
    jobs: VecDeque<ReadJob>,
    /// Readers waiting for work: a job wakes one only when there is one.
    idle: usize,
}

impl InboxReaders {
    /// The process's readers, started on first use; `None` if no thread
    /// could be started.
    fn get() -> Option<&'static Arc<InboxReaders>> {
        static READERS: OnceLock<Option<Arc<InboxReaders>>> = OnceLock::new();
        READERS
            .get_or_init(|| {
                let readers = Arc::new(InboxReaders {
                    queue: Mutex::new(ReadQueue { jobs: VecDeque::new(), idle: 0 }),
                    work: Condvar::new(),
                });
                let n = std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_add(1).clamp(3, 8);
                let mut started = 0;
                for i in 0..n {
                    let r = readers.clone();
                    match std::thread::Builder::new().name(format!("qunfa-inbox-{i}")).spawn(move || r.serve()) {
                        Ok(_) => started += 1,
                        Err(error) => tracing::warn!(%error, "could not start an inbox reader thread"),
                    }
                }
                (started > 0).then_some(readers)
            })
            .as_ref()
    }

    fn submit(&self, job: ReadJob) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.jobs.push_back(job);
        let wake = queue.idle > 0;
        drop(queue);
        if wake {
            self.work.notify_one();
        }
    }

    fn serve(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.jobs.pop_front() {
                        break job;
                    }
                    queue.idle += 1;
                    queue = self.work.wait(queue).unwrap_or_else(|e| e.into_inner());
                    queue.idle -= 1;
                }
            };
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(broadcast_id: i64, content: RawContent, body: Option<&str>, times: Option<i64>) -> InboxItem {
        InboxItem {
            broadcast_id,
            content,
            body: body.map(str::to_owned),
            sender_name: "华东\"分公司\"".into(),
            delivered_at: times,
            read_at: times.map(|t| t + 1),
            replied_at: times.map(|t| t + 2),
            recalled: false,
        }
    }

    /// The list route writes exactly what the wire types would, whatever is set.
    #[test]
    fn page_json_is_the_wire_page() {
        let every_field = RawContent {
            content_type: "miniprogram".into(),
            text: Some("文字\n\t\u{1}".into()),
            media_id: Some("m1".into()),
            caption: Some("caption".into()),
            url: Some("https://example.com/?a=1&b=\"2\"".into()),
            title: Some("title".into()),
            description: Some("description".into()),
            appid: Some("wx123".into()),
            pagepath: Some("pages/index".into()),
            thumb_media_id: Some("m2".into()),
            filename: Some("a.pdf".into()),
            html: Some("<p>html</p>".into()),
        };
        let only = |content_type: &str, set: fn(&mut RawContent)| {
            let mut c = RawContent { content_type: content_type.into(), ..Default::default() };
            set(&mut c);
            c
        };
        let items = [
            item(9, every_field, Some("张三，您好"), Some(1_767_225_600_123)),
            item(8, only("text", |c| c.text = Some("全体".into())), None, Some(0)),
            item(7, only("image", |c| c.caption = Some("图".into())), None, None),
            item(6, only("link", |c| c.description = Some("链接".into())), None, None),
            item(5, only("richtext", |c| c.html = Some("<b>富</b>".into())), None, None),
            item(4, only("file", |c| c.filename = Some("f.pdf".into())), None, None),
            item(3, only("purged", |_| {}), None, None),
            InboxItem { recalled: true, ..item(2, only("recalled", |_| {}), None, Some(5)) },
        ];
        for (items, next_cursor) in [(&items[..], Some(3)), (&items[..1], None), (&items[..0], None)] {
            let wire = Page {
                items: items.iter().cloned().map(item_wire).collect(),
                next_cursor: next_cursor.map(|c: i64| c.to_string()),
            };
            assert_eq!(
                serde_json::to_string(&PageJson { items, next_cursor }).unwrap(),
                serde_json::to_string(&wire).unwrap()
            );
        }
    }
}
