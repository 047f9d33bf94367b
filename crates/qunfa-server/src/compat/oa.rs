//! Official Account (公众号) API: mass send (sendall/send/preview/get/
//! delete/speed), tags, followers and media, on qunfa's tags, contacts,
//! broadcasts and speed levels.

use qunfa_audience::AudienceSpec;
use qunfa_core::{broadcast::Priority, message::RawContent, tag::TagPath};
use qunfa_store::{media::MediaUpload, tags::MembershipChange};
use serde_json::{json, Value};

use super::{bool_of, int_of, list_of, str_of, wx, Caller, Req, SendRequest, Wx, WxResult};
use crate::Inner;

/// OpenIDs of one `message/mass/send`.
const MIN_OPENIDS: usize = 2;
const MAX_OPENIDS: usize = 10_000;
/// OpenIDs of one batch tagging.
const MAX_TAGGING: usize = 50;
/// OpenIDs of one page of followers or tag members.
pub const PAGE: usize = 10_000;
/// Bytes of a clientmsgid.
const MAX_CLIENT_MSG_ID: usize = 64;

pub fn route(s: &Inner, c: &Caller, path: &str, req: &Req) -> WxResult {
    match path {
        "message/mass/sendall" => mass_send(s, c, req, Target::Filter),
        "message/mass/send" => mass_send(s, c, req, Target::OpenIds),
        "message/mass/preview" => mass_send(s, c, req, Target::Preview),
        "message/mass/get" => {
            let b = super::broadcast_of(s, c, req.field(&["msg_id", "msgid"]))?;
            Ok(json!({"msg_id": b.id, "msg_status": super::mass_status(&b)}))
        }
        "message/mass/delete" => {
            let b = super::broadcast_of(s, c, req.field(&["msg_id", "msgid"]))?;
            super::recall(s, c, &b)?;
            Ok(json!({}))
        }
        "message/mass/speed/get" => {
            let level = s.store.speed_level(c.ws())?;
            let per_minute = s.policy.delivery.speed_level(level.unwrap_or(0)).unwrap_or(0);
            Ok(json!({"speed": level.unwrap_or(0), "realspeed": per_minute / 10_000}))
        }
        "message/mass/speed/set" => {
            let speed = int_of(&req.body, &["speed"]).ok_or_else(|| wx(45083, "speed missing"))?;
            let level = u8::try_from(speed)
                .ok()
                .filter(|l| s.policy.delivery.speed_level(*l).is_some())
                .ok_or_else(|| wx(45083, "invalid speed: the speed level is 0 to 4"))?;
            s.store.set_speed_level(c.ws(), Some(level), &c.actor, s.now())?;
            s.engine.wake();
            Ok(json!({}))
        }
        "tags/create" => tags_create(s, c, req),
        "tags/get" => tags_get(s, c),
        "tags/members/batchtagging" => tagging(s, c, req, true),
        "tags/members/batchuntagging" => tagging(s, c, req, false),
        "tags/getidlist" => {
            let openid = req.field(&["openid"]).ok_or_else(|| wx(40003, "invalid openid"))?;
            let idx = contact(s, c, &openid)?;
            Ok(json!({"tagid_list": tag_ids_of(s, c, idx)?}))
        }
        "user/tag/get" => tag_members(s, c, req),
        "user/get" => followers(s, c, req),
        "user/info" => {
            let openid = req.field(&["openid"]).ok_or_else(|| wx(40003, "invalid openid"))?;
            let idx = contact(s, c, &openid)?;
            let rec = s.store.contact(c.ws(), idx)?;
            Ok(json!({
                "subscribe": 1, "openid": rec.external_id, "nickname": rec.name, "language": "zh_CN",
                "subscribe_time": rec.created_at / 1000, "remark": "", "groupid": 0,
                "tagid_list": tag_ids_of(s, c, idx)?,
            }))
        }
        "media/upload" => media_upload(s, c, req),
        _ => Err(wx(
            48001,
            format!("api unauthorized: /cgi-bin/{path} is not an Official Account API qunfa offers (docs/compat.md)"),
        )),
    }
}

fn contact(s: &Inner, c: &Caller, openid: &str) -> Result<u32, Wx> {
    s.store
        .contacts_by_external_ids(c.ws(), &[openid.to_owned()])?
        .get(openid)
        .copied()
        .ok_or_else(|| wx(40003, format!("invalid openid: {openid}")))
}

fn tag_ids_of(s: &Inner, c: &Caller, idx: u32) -> Result<Vec<i64>, Wx> {
    let rec = s.store.contact(c.ws(), idx)?;
    let tags = s.store.tags(c.ws())?;
    Ok(tags.iter().filter(|t| rec.tags.contains(&t.path)).map(|t| t.id).collect())
}

enum Target {
    Filter,
    OpenIds,
    Preview,
}

/// The content of an Official Account mass message.
fn content_of(b: &Value) -> Result<RawContent, Wx> {
    let msgtype = str_of(b, &["msgtype"]).ok_or_else(|| wx(40008, "msgtype missing"))?;
    let obj = b.get(&msgtype).cloned().unwrap_or(Value::Null);
    let mut raw = RawContent::default();
    match msgtype.as_str() {
        "text" => {
            let t = str_of(&obj, &["content"]).unwrap_or_default();
            if t.trim().is_empty() {
                return Err(wx(44004, "empty content"));
            }
            raw.content_type = "text".into();
            raw.text = Some(t);
        }
        "image" => {
            raw.content_type = "image".into();
            let id = str_of(&obj, &["media_id"])
                .or_else(|| obj.get("media_ids").and_then(|m| m.get(0)).and_then(Value::as_str).map(str::to_owned));
            raw.media_id = Some(id.ok_or_else(|| wx(40007, "invalid media_id"))?);
            raw.caption = str_of(&obj, &["recommend"]);
        }
        other => {
            return Err(wx(
                40008,
                format!("invalid message type: {other:?} (qunfa offers text and image mass messages)"),
            ))
        }
    }
    Ok(raw)
}

fn mass_send(s: &Inner, c: &Caller, req: &Req, target: Target) -> WxResult {
    let b = &req.body;
    let ws = c.ws();
    let raw = content_of(b)?;
    let client_msg_id = str_of(b, &["clientmsgid"]).filter(|x| !x.is_empty());
    if let Some(cid) = &client_msg_id {
        if cid.len() > MAX_CLIENT_MSG_ID {
            return Err(wx(45067, format!("clientmsgid size out of limit: at most {MAX_CLIENT_MSG_ID} bytes")));
        }
        // Kept for the policy's hours; a use within them answers 45066/45065 (compat::send).
        let window = i64::from(s.policy.client_msg_id_hours) * 3_600_000;
        s.store.expire_client_msg_id(ws, cid, s.now() - window)?;
    }
    let (audience, kind, errmsg) = match target {
        Target::Filter => {
            let filter = b.get("filter").cloned().unwrap_or(Value::Null);
            if bool_of(&filter, &["is_to_all"]) {
                (AudienceSpec::All, "oa", "send job submission success")
            } else {
                // tag_id, or the legacy group_id of the same thing.
                let id = int_of(&filter, &["tag_id", "group_id"]).ok_or_else(|| wx(45159, "invalid tag_id"))?;
                if !s.store.tag_exists(ws, id)? {
                    return Err(wx(45159, format!("invalid tag_id: {id}")));
                }
                (AudienceSpec::Tag(id), "oa", "send job submission success")
            }
        }
        Target::OpenIds => {
            let openids = list_of(b, &["touser"]);
            if !(MIN_OPENIDS..=MAX_OPENIDS).contains(&openids.len()) {
                return Err(wx(
                    40130,
                    format!(
                        "invalid openid list size, at least {MIN_OPENIDS} openid and at most {MAX_OPENIDS}: {}",
                        openids.len()
                    ),
                ));
            }
            let found = s.store.contacts_by_external_ids(ws, &openids)?;
            if found.is_empty() {
                return Err(wx(40003, "invalid openid: none of the openids is a follower"));
            }
            (super::wecom::audience_of(found.into_values().collect()), "oa", "send job submission success")
        }
        Target::Preview => {
            if b.get("towxname").is_some() && b.get("touser").is_none() {
                return Err(wx(40132, "invalid username: qunfa previews to an openid (touser)"));
            }
            let openid = str_of(b, &["touser"]).ok_or_else(|| wx(40003, "invalid openid"))?;
            (AudienceSpec::Contacts(vec![contact(s, c, &openid)?]), "oa-preview", "preview success")
        }
    };
    let preview = kind == "oa-preview";
    let sent = super::send(
        s,
        c,
        SendRequest {
            raw,
            audience,
            client_msg_id,
            priority: if preview { Priority::Chat } else { Priority::Broadcast },
            send_kind: kind,
            dup: None,
            sender: None,
            callback: !preview && c.creds.callback_url.is_some(),
        },
    )?;
    let mut out = json!({"errcode": 0, "errmsg": errmsg, "msg_id": sent.id});
    if !preview {
        out["msg_data_id"] = json!(sent.id);
    }
    Ok(out)
}

fn tags_create(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let name =
        req.body.pointer("/tag/name").and_then(Value::as_str).map(str::to_owned).or_else(|| req.field(&["name"]));
    let name = name.ok_or_else(|| wx(45158, "tag name missing"))?;
    if name.trim().is_empty() || name.chars().count() > 30 || name.contains('/') {
        return Err(wx(45158, "tag name too long or invalid: at most 30 characters, no /"));
    }
    let path = TagPath::parse(&name).map_err(|_| wx(45158, "invalid tag name"))?;
    if s.store.tag_by_path(c.ws(), &path).is_ok() {
        return Err(wx(45157, format!("invalid tag name: {name} exists")));
    }
    let tag = s.store.create_tag(c.ws(), &c.tier(s), &path, &c.actor, s.now())?;
    Ok(json!({"tag": {"id": tag.id, "name": tag.path}}))
}

fn tags_get(s: &Inner, c: &Caller) -> WxResult {
    let tags = s.store.tags(c.ws())?;
    Ok(
        json!({"tags": tags.iter().map(|t| json!({"id": t.id, "name": t.path, "count": t.n_contacts})).collect::<Vec<_>>()}),
    )
}

fn tag_of(s: &Inner, c: &Caller, v: Option<i64>) -> Result<i64, Wx> {
    match v {
        Some(id) if s.store.tag_exists(c.ws(), id)? => Ok(id),
        _ => Err(wx(45159, "invalid tag id")),
    }
}

fn tagging(s: &Inner, c: &Caller, req: &Req, add: bool) -> WxResult {
    let id = tag_of(s, c, int_of(&req.body, &["tagid", "tag_id"]))?;
    let openids = list_of(&req.body, &["openid_list"]);
    if openids.is_empty() {
        return Err(wx(40003, "invalid openid: openid_list is empty"));
    }
    if openids.len() > MAX_TAGGING {
        return Err(wx(40032, format!("invalid openid list size: at most {MAX_TAGGING}")));
    }
    let found = s.store.contacts_by_external_ids(c.ws(), &openids)?;
    if let Some(missing) = openids.iter().find(|o| !found.contains_key(*o)) {
        return Err(wx(40003, format!("invalid openid: {missing}")));
    }
    let mut idxs: Vec<u32> = found.into_values().collect();
    idxs.sort_unstable();
    let change = if add { MembershipChange::Add(&idxs) } else { MembershipChange::Remove(&idxs) };
    s.store.tag_members(c.ws(), &c.tier(s), id, change, &c.actor, s.now())?;
    Ok(json!({}))
}

/// One page of openids from `next_openid` on: (openids, next_openid). The
/// next openid is the page's last when the page is full, empty at the end.
fn page(
    s: &Inner,
    c: &Caller,
    members: Option<&qunfa_audience::Bitmap>,
    next: Option<String>,
) -> Result<(Vec<String>, String), Wx> {
    let after = match next {
        None => None,
        Some(o) => Some(contact(s, c, &o)?),
    };
    let openids: Vec<String> = match members {
        None => s.store.external_ids_page(c.ws(), after, PAGE)?.into_iter().map(|(_, id)| id).collect(),
        Some(m) => {
            let idxs: Vec<u32> = m.iter().filter(|i| after.is_none_or(|a| *i > a)).take(PAGE).collect();
            s.store.external_ids_of(c.ws(), &idxs)?.into_iter().map(|(_, id)| id).collect()
        }
    };
    let next = if openids.len() == PAGE { openids.last().cloned().unwrap_or_default() } else { String::new() };
    Ok((openids, next))
}

fn page_json(total: u64, openids: Vec<String>, next: String) -> Value {
    let mut out = json!({"total": total, "count": openids.len(), "next_openid": next});
    if !openids.is_empty() {
        out["data"] = json!({"openid": openids});
    }
    out
}

fn followers(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let total = s.store.live_contact_count(c.ws())?;
    let (openids, next) = page(s, c, None, req.field(&["next_openid"]).filter(|n| !n.is_empty()))?;
    Ok(page_json(total, openids, next))
}

fn tag_members(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let id = tag_of(s, c, int_of(&req.body, &["tagid", "tag_id"]))?;
    let members = s.store.resolve_audience_at(c.ws(), &AudienceSpec::Tag(id), s.now())?;
    let next = str_of(&req.body, &["next_openid"]).filter(|n| !n.is_empty());
    let (openids, next) = page(s, c, Some(&members), next)?;
    let mut out = page_json(members.cardinality(), openids, next);
    out.as_object_mut().map(|m| m.remove("total"));
    Ok(out)
}

/// The `media` part of a multipart body: (filename, content type, bytes — a
/// slice of the body, not a copy).
fn multipart_media(req: &Req) -> Option<(Option<String>, String, axum::body::Bytes)> {
    let boundary = req.content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary="))?.trim_matches('"');
    let delimiter = format!("--{boundary}");
    let raw = &req.raw[..];
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    };
    let mut at = find(raw, delimiter.as_bytes(), 0)? + delimiter.len();
    loop {
        let head_end = find(raw, b"\r\n\r\n", at)?;
        let head = String::from_utf8_lossy(&raw[at..head_end]).to_string();
        let body_start = head_end + 4;
        let next = find(raw, format!("\r\n{delimiter}").as_bytes(), body_start)?;
        let lower = head.to_ascii_lowercase();
        if lower.contains("name=\"media\"") {
            let filename = head.split("filename=\"").nth(1).and_then(|f| f.split('"').next()).map(str::to_owned);
            let ct = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| "application/octet-stream".into());
            return Some((filename, ct, req.raw.slice(body_start..next)));
        }
        at = next + 2 + delimiter.len();
    }
}

/// `media/upload?type=` with the file in the multipart field `media`
/// (WeCom and Official Account alike): qunfa media, its id the media_id.
pub fn media_upload(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let kind = req.param("type").unwrap_or("file").to_owned();
    let max = match kind.as_str() {
        "image" | "video" => 10 << 20,
        "voice" | "thumb" => 2 << 20,
        "file" => 20 << 20,
        _ => return Err(wx(40004, format!("invalid media type: {kind:?}"))),
    };
    let (filename, mut content_type, bytes) = multipart_media(req)
        .ok_or_else(|| wx(41005, "media data missing: send the file in the multipart field media"))?;
    if bytes.len() <= 5 || bytes.len() > max {
        return Err(wx(40006, format!("invalid file size: {} bytes; {kind} is 6 bytes to {max}", bytes.len())));
    }
    if content_type == "application/octet-stream" && kind == "image" {
        content_type = "image/jpeg".into();
    }
    let image_hash = content_type.starts_with("image/").then(|| qunfa_safety::dedup::image_hash(&bytes).ok()).flatten();
    let filename = filename.filter(|f| !f.is_empty() && f.chars().count() <= 255 && !f.chars().any(char::is_control));
    let upload = MediaUpload { bytes: &bytes, content_type: &content_type, filename: filename.as_deref(), image_hash };
    let id = s.store.put_media(c.ws(), upload, &c.actor, s.now())?;
    let created_at = s.now() / 1000;
    Ok(match c.kind {
        super::Kind::WeCom => {
            json!({"errcode": 0, "errmsg": "", "type": kind, "media_id": id.as_str(), "created_at": created_at.to_string()})
        }
        super::Kind::Oa => json!({"type": kind, "media_id": id.as_str(), "created_at": created_at}),
    })
}
