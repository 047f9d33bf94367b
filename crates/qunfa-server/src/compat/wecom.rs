//! WeCom (企业微信) server API: directory, app messages, recall, customer
//! mass send, corp tags and media, on qunfa's contacts, departments, tags
//! and broadcasts.

use qunfa_audience::AudienceSpec;
use qunfa_core::{
    broadcast::Priority,
    contact::{ContactInput, RawChannels, RawContact},
    message::RawContent,
    tag::TagPath,
    workspace::Name,
};
use qunfa_store::{tags::MembershipChange, StoreError};
use serde_json::{json, Value};
use sha2::Digest;

use super::{bool_of, from_api, int_of, list_of, str_of, wx, Caller, Kind, Req, SendRequest, Wx, WxResult};
use crate::{error::ApiError, Inner};

/// WeCom's limits on one `message/send`.
const MAX_USERS: usize = 1000;
const MAX_PARTIES: usize = 100;
const MAX_TAGS: usize = 100;
/// Text and markdown content, in bytes.
const MAX_TEXT_BYTES: usize = 2048;
/// external_userid of one customer mass send.
const MAX_EXTERNAL_USERS: usize = 10_000;
/// The root department every corp has.
const ROOT: i64 = 1;

pub fn route(s: &Inner, c: &Caller, path: &str, req: &Req) -> WxResult {
    match path {
        "department/create" => department_create(s, c, req),
        "department/list" | "department/simplelist" => department_list(s, c, req),
        "user/create" => user_create(s, c, req),
        "user/get" => user_get(s, c, req),
        "user/delete" => {
            // Deleting a contact erases its personal data everywhere (ARCHITECTURE.md).
            let userid = req.field(&["userid"]).ok_or_else(|| wx(41009, "userid missing"))?;
            let idx =
                contact_by_userid(s, c, &userid)?.ok_or_else(|| wx(60111, format!("userid not found: {userid}")))?;
            s.store.delete_contact(c.ws(), idx, &c.actor, s.now())?;
            Ok(json!({"errcode": 0, "errmsg": "deleted"}))
        }
        "user/list" => user_list(s, c, req, false),
        "user/simplelist" => user_list(s, c, req, true),
        "tag/create" => tag_create(s, c, req),
        "tag/addtagusers" => tag_users(s, c, req, true),
        "tag/deltagusers" => tag_users(s, c, req, false),
        "tag/get" => tag_get(s, c, req),
        "tag/list" => tag_list(s, c),
        "message/send" => message_send(s, c, req),
        "message/recall" => {
            let b = super::broadcast_of(s, c, req.field(&["msgid"]))?;
            super::recall(s, c, &b)?;
            Ok(json!({}))
        }
        "media/upload" => super::oa::media_upload(s, c, req),
        "externalcontact/get_corp_tag_list" => corp_tag_list(s, c, req),
        "externalcontact/add_corp_tag" => add_corp_tag(s, c, req),
        "externalcontact/mark_tag" => mark_tag(s, c, req),
        "externalcontact/add_msg_template" => add_msg_template(s, c, req),
        "externalcontact/get_groupmsg_list_v2" => groupmsg_list(s, c, req),
        "externalcontact/get_groupmsg_task" => groupmsg_task(s, c, req),
        "externalcontact/get_groupmsg_send_result" => groupmsg_send_result(s, c, req),
        "externalcontact/cancel_groupmsg_send" => {
            let b = super::broadcast_of(s, c, req.field(&["msgid"]))?;
            super::cancel(s, c, &b)?;
            Ok(json!({}))
        }
        _ => Err(wx(
            48001,
            format!("api unauthorized: /cgi-bin/{path} is not a WeCom API qunfa offers (docs/compat.md)"),
        )),
    }
}

fn api(e: ApiError) -> Wx {
    from_api(e, Kind::WeCom)
}

/// The qunfa department of a WeCom department id: 1 is the root (the
/// workspace itself, `None`); every other WeCom id is qunfa's id plus one.
fn department(s: &Inner, c: &Caller, id: i64) -> Result<Option<i64>, Wx> {
    if id == ROOT {
        return Ok(None);
    }
    if id > ROOT && s.store.department_exists(c.ws(), id - 1)? {
        Ok(Some(id - 1))
    } else {
        Err(wx(60003, format!("department not found: {id}")))
    }
}

/// The WeCom id of a qunfa department.
fn wecom_department(id: Option<i64>) -> i64 {
    id.map_or(ROOT, |d| d + 1)
}

fn department_create(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    if !c.tier(s).departments {
        return Err(api(ApiError::code(qunfa_core::Code::DepartmentNotAllowed)));
    }
    let name = req.field(&["name"]).ok_or_else(|| wx(41016, "name missing"))?;
    let name = Name::parse(&name).map_err(|_| wx(60001, "invalid department name length"))?;
    let parent = department(s, c, int_of(&req.body, &["parentid", "parent_id"]).unwrap_or(ROOT))?;
    let d = s.store.create_department(c.ws(), &name, parent, &c.actor, s.now())?;
    Ok(json!({"errcode": 0, "errmsg": "created", "id": wecom_department(Some(d.id))}))
}

fn department_list(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let all = s.store.departments(c.ws())?;
    let mut out: Vec<Value> = vec![json!({"id": ROOT, "name": c.workspace.name, "parentid": 0, "order": 100_000_000})];
    for d in &all {
        out.push(json!({"id": wecom_department(Some(d.id)), "name": d.name, "parentid": wecom_department(d.parent_id), "order": 0}));
    }
    if let Some(id) = req.param("id").and_then(|v| v.parse::<i64>().ok()) {
        department(s, c, id)?;
        // The department and everything under it.
        let mut keep = vec![id];
        let mut i = 0;
        while i < keep.len() {
            let p = keep[i];
            keep.extend(
                all.iter().filter(|d| wecom_department(d.parent_id) == p).map(|d| wecom_department(Some(d.id))),
            );
            i += 1;
        }
        out.retain(|d| d["id"].as_i64().is_some_and(|x| keep.contains(&x)));
    }
    Ok(json!({"department": out}))
}

fn user_create(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let b = &req.body;
    let userid = str_of(b, &["userid"]).ok_or_else(|| wx(41009, "userid missing"))?;
    let name = str_of(b, &["name"]).ok_or_else(|| wx(60112, "invalid name: name missing"))?;
    let mut departments = Vec::new();
    for d in list_of(b, &["department"]) {
        let id = d.parse::<i64>().map_err(|_| wx(60003, format!("department not found: {d}")))?;
        if let Some(id) = department(s, c, id)? {
            departments.push(id);
        }
    }
    let mut attributes = Vec::new();
    if let Some(p) = str_of(b, &["position"]).filter(|p| !p.is_empty()) {
        attributes.push(("position".to_owned(), json!(p)));
    }
    let raw = RawContact {
        external_id: Some(userid.clone()),
        name: Some(name),
        attributes,
        channels: RawChannels {
            email: str_of(b, &["email"]).filter(|e| !e.is_empty()),
            phone: str_of(b, &["mobile"]).filter(|e| !e.is_empty()),
            webhook: None,
            wecom_userid: Some(userid.clone()),
        },
        ..RawContact::default()
    };
    let input = ContactInput::parse(raw)
        .map_err(|e| api(ApiError::new(e.code, format!("{}: {}", e.field, e.code.message_en()))))?;
    let tier = c.tier(s);
    let rec = match s.store.create_contact(c.ws(), &tier, &input, &c.actor, s.now()) {
        Ok(r) => r,
        Err(e) if matches!(&e, StoreError::Rejected { code: qunfa_core::Code::Duplicate, .. }) => {
            return Err(wx(60102, format!("userid existed: {userid}")))
        }
        Err(e) => return Err(e.into()),
    };
    for d in departments {
        s.store.department_members(c.ws(), d, &[rec.idx], &c.actor, s.now())?;
    }
    Ok(json!({"errcode": 0, "errmsg": "created"}))
}

fn user_json(rec: &qunfa_store::contacts::ContactRecord, simple: bool) -> Value {
    let departments: Vec<i64> = if rec.departments.is_empty() {
        vec![ROOT]
    } else {
        rec.departments.iter().map(|d| wecom_department(Some(*d))).collect()
    };
    if simple {
        return json!({"userid": rec.external_id, "name": rec.name, "department": departments});
    }
    json!({
        "userid": rec.external_id,
        "name": rec.name,
        "department": departments,
        "position": rec.attributes.get("position").and_then(Value::as_str).unwrap_or_default(),
        "mobile": rec.phone.clone().unwrap_or_default(),
        "email": rec.email.clone().unwrap_or_default(),
        "status": 1,
        "enable": 1,
    })
}

fn contact_by_userid(s: &Inner, c: &Caller, userid: &str) -> Result<Option<u32>, Wx> {
    Ok(s.store.contacts_by_external_ids(c.ws(), &[userid.to_owned()])?.get(userid).copied())
}

fn user_get(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let userid = req.field(&["userid"]).ok_or_else(|| wx(41009, "userid missing"))?;
    let idx = contact_by_userid(s, c, &userid)?.ok_or_else(|| wx(60111, format!("userid not found: {userid}")))?;
    let rec = s.store.contact(c.ws(), idx)?;
    let mut v = user_json(&rec, false);
    v["errcode"] = json!(0);
    v["errmsg"] = json!("ok");
    Ok(v)
}

/// Users of one list: WeCom's page of 10,000.
const USER_LIST_MAX: usize = 10_000;

fn user_list(s: &Inner, c: &Caller, req: &Req, simple: bool) -> WxResult {
    let id = req
        .field(&["department_id"])
        .and_then(|d| d.parse::<i64>().ok())
        .ok_or_else(|| wx(60003, "department_id missing"))?;
    let fetch_child = req.field(&["fetch_child"]).is_some_and(|f| f == "1");
    let dept = department(s, c, id)?;
    let now = s.now();
    let members = match dept {
        Some(d) => s.store.resolve_audience_at(c.ws(), &AudienceSpec::Department(d), now)?,
        // The root's own members are the contacts in no department.
        None if !fetch_child => {
            let mut all = s.store.resolve_audience_at(c.ws(), &AudienceSpec::All, now)?;
            let top: Vec<AudienceSpec> = s
                .store
                .departments(c.ws())?
                .iter()
                .filter(|d| d.parent_id.is_none())
                .map(|d| AudienceSpec::Department(d.id))
                .collect();
            all.andnot_inplace(&super::resolve_union(s, c.ws(), &top)?);
            all
        }
        None => s.store.resolve_audience_at(c.ws(), &AudienceSpec::All, now)?,
    };
    // Read in pages (one contact query per 1,000, one department query per
    // chunk), filtered before the limit: the list is the first 10,000 that match.
    let mut list = Vec::new();
    let idxs: Vec<u32> = members.iter().collect();
    for page in idxs.chunks(1000) {
        for rec in s.store.contacts_with_departments(c.ws(), page)? {
            let direct = match dept {
                Some(d) => rec.departments.contains(&d),
                None => rec.departments.is_empty(),
            };
            if fetch_child || direct {
                list.push(user_json(&rec, simple));
            }
        }
        if list.len() >= USER_LIST_MAX {
            list.truncate(USER_LIST_MAX);
            break;
        }
    }
    Ok(json!({"errcode": 0, "errmsg": "ok", "userlist": list}))
}

fn tag_create(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let name = req.field(&["tagname"]).ok_or_else(|| wx(40071, "tagname missing"))?;
    if name.chars().count() > 32 || name.contains('/') {
        return Err(wx(40072, "invalid tagname: at most 32 characters, no /"));
    }
    let path = TagPath::parse(&name).map_err(|code| api(ApiError::code(code)))?;
    if s.store.tag_by_path(c.ws(), &path).is_ok() {
        return Err(wx(40071, format!("tagname already exists: {name}")));
    }
    let tag = s.store.create_tag(c.ws(), &c.tier(s), &path, &c.actor, s.now())?;
    Ok(json!({"errcode": 0, "errmsg": "created", "tagid": tag.id}))
}

fn tag_id(s: &Inner, c: &Caller, v: Option<i64>) -> Result<i64, Wx> {
    let id = v.ok_or_else(|| wx(40068, "tagid missing"))?;
    if s.store.tag_exists(c.ws(), id)? {
        Ok(id)
    } else {
        Err(wx(40068, format!("invalid tagid: {id}")))
    }
}

fn tag_users(s: &Inner, c: &Caller, req: &Req, add: bool) -> WxResult {
    let id = tag_id(s, c, int_of(&req.body, &["tagid"]))?;
    let users = list_of(&req.body, &["userlist"]);
    let parties = list_of(&req.body, &["partylist"]);
    if users.len() > 1000 || parties.len() > 100 {
        return Err(wx(40032, "invalid list size: at most 1000 users and 100 departments"));
    }
    let found = s.store.contacts_by_external_ids(c.ws(), &users)?;
    let invalid: Vec<&str> = users.iter().filter(|u| !found.contains_key(*u)).map(String::as_str).collect();
    // A qunfa tag holds contacts, not departments.
    let invalid_party: Vec<i64> = parties.iter().filter_map(|p| p.parse::<i64>().ok()).collect();
    if found.is_empty() {
        return Err(wx(40070, "all list invalid"));
    }
    let mut idxs: Vec<u32> = found.values().copied().collect();
    idxs.sort_unstable();
    let change = if add { MembershipChange::Add(&idxs) } else { MembershipChange::Remove(&idxs) };
    s.store.tag_members(c.ws(), &c.tier(s), id, change, &c.actor, s.now())?;
    let mut out = json!({"errcode": 0, "errmsg": if add { "ok" } else { "deleted" }});
    if !invalid.is_empty() {
        out["invalidlist"] = json!(invalid.join("|"));
    }
    if !invalid_party.is_empty() {
        out["invalidparty"] = json!(invalid_party);
    }
    Ok(out)
}

fn tag_get(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let id = tag_id(s, c, req.field(&["tagid"]).and_then(|t| t.parse().ok()))?;
    let tag = s.store.tag(c.ws(), id)?;
    let members = s.store.resolve_audience_at(c.ws(), &AudienceSpec::Tag(id), s.now())?;
    let idxs: Vec<u32> = members.iter().take(100_000).collect();
    let mut users = Vec::new();
    for chunk in idxs.chunks(1000) {
        for rec in s.store.contacts_among(c.ws(), chunk)? {
            users.push(json!({"userid": rec.external_id, "name": rec.name}));
        }
    }
    Ok(json!({"errcode": 0, "errmsg": "ok", "tagname": tag.path, "userlist": users, "partylist": []}))
}

fn tag_list(s: &Inner, c: &Caller) -> WxResult {
    let tags = s.store.tags(c.ws())?;
    Ok(json!({"taglist": tags.iter().map(|t| json!({"tagid": t.id, "tagname": t.path})).collect::<Vec<_>>()}))
}

/// The content of a WeCom message (`msgtype` and its object) as qunfa content.
pub fn content_of(body: &Value, msgtype: &str) -> Result<RawContent, Wx> {
    let obj = body.get(msgtype).cloned().unwrap_or(Value::Null);
    let text_of = |v: &Value| -> Result<String, Wx> {
        let t = str_of(v, &["content"]).unwrap_or_default();
        if t.trim().is_empty() {
            return Err(wx(44004, "empty content"));
        }
        if t.len() > MAX_TEXT_BYTES {
            return Err(wx(45002, format!("content size out of limit: {} bytes, at most {MAX_TEXT_BYTES}", t.len())));
        }
        Ok(t)
    };
    let mut raw = RawContent::default();
    match msgtype {
        "text" | "markdown" => {
            raw.content_type = "text".into();
            raw.text = Some(text_of(&obj)?);
        }
        "image" => {
            raw.content_type = "image".into();
            raw.media_id = Some(str_of(&obj, &["media_id"]).ok_or_else(|| wx(40007, "invalid media_id"))?);
        }
        "file" => {
            raw.content_type = "file".into();
            raw.media_id = Some(str_of(&obj, &["media_id"]).ok_or_else(|| wx(40007, "invalid media_id"))?);
            raw.filename = Some(str_of(&obj, &["filename"]).unwrap_or_else(|| "file".into()));
        }
        "textcard" => {
            raw.content_type = "link".into();
            raw.title = str_of(&obj, &["title"]);
            raw.description = str_of(&obj, &["description"]);
            raw.url = str_of(&obj, &["url"]);
        }
        "news" => {
            let first = obj.get("articles").and_then(|a| a.get(0)).cloned().unwrap_or(Value::Null);
            raw.content_type = "link".into();
            raw.title = str_of(&first, &["title"]);
            raw.description = str_of(&first, &["description"]);
            raw.url = str_of(&first, &["url"]);
        }
        "miniprogram_notice" | "miniprogram" => {
            raw.content_type = "miniprogram".into();
            raw.appid = str_of(&obj, &["appid"]);
            raw.pagepath = str_of(&obj, &["page", "pagepath"]);
            raw.title = str_of(&obj, &["title"]);
        }
        other => return Err(wx(40008, format!("invalid message type: {other:?}"))),
    }
    Ok(raw)
}

/// The audience of a list of contact idxs: the picked contacts (a compatible
/// send may pick up to the policy's `compat_batch_max`, checked by preflight).
pub fn audience_of(mut idxs: Vec<u32>) -> AudienceSpec {
    idxs.sort_unstable();
    idxs.dedup();
    AudienceSpec::Contacts(idxs)
}

/// A tier that sends to one tag or picked contacts only (`combined_audiences
/// = false`, personal) refuses a mix of picked contacts and tags or
/// departments, which would otherwise be resolved into picked contacts.
fn refuse_mix(s: &Inner, c: &Caller, what: &str) -> Result<(), Wx> {
    if c.tier(s).combined_audiences {
        return Ok(());
    }
    Err(api(ApiError::new(
        qunfa_core::Code::AudienceCombination,
        format!("{} workspaces send to one tag or to picked contacts, not {what}", c.workspace.kind.as_str()),
    )))
}

fn message_send(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let b = &req.body;
    let users = list_of(b, &["touser"]);
    let parties = list_of(b, &["toparty"]);
    let tags = list_of(b, &["totag"]);
    if users.len() > MAX_USERS {
        return Err(wx(40058, format!("invalid touser: {} userids, at most {MAX_USERS}", users.len())));
    }
    if parties.len() > MAX_PARTIES {
        return Err(wx(40058, format!("invalid toparty: {} departments, at most {MAX_PARTIES}", parties.len())));
    }
    if tags.len() > MAX_TAGS {
        return Err(wx(40058, format!("invalid totag: {} tags, at most {MAX_TAGS}", tags.len())));
    }
    let msgtype = str_of(b, &["msgtype"]).ok_or_else(|| wx(41008, "msgtype missing"))?;
    let raw = content_of(b, &msgtype)?;
    let ws = c.ws();
    let all = users.iter().any(|u| u == "@all");
    let found = s.store.contacts_by_external_ids(ws, &users)?;
    let invalid_users: Vec<&str> =
        users.iter().filter(|u| *u != "@all" && !found.contains_key(*u)).map(String::as_str).collect();
    let mut terms = Vec::new();
    let mut specs = Vec::new();
    let mut invalid_parties = Vec::new();
    for p in &parties {
        match p.parse::<i64>().ok().map(|id| department(s, c, id)) {
            Some(Ok(Some(id))) => {
                terms.push(format!("dept:{id}"));
                specs.push(AudienceSpec::Department(id));
            }
            Some(Ok(None)) => {
                terms.push("all".into());
                specs.push(AudienceSpec::All);
            }
            _ => invalid_parties.push(p.as_str()),
        }
    }
    let mut invalid_tags = Vec::new();
    for t in &tags {
        match t.parse::<i64>() {
            Ok(id) if s.store.tag_exists(ws, id)? => {
                terms.push(super::tag_term(&s.store.tag(ws, id)?.path));
                specs.push(AudienceSpec::Tag(id));
            }
            _ => invalid_tags.push(t.as_str()),
        }
    }
    if !all && found.is_empty() && specs.is_empty() {
        return Err(wx(81013, "user & party & tag all invalid"));
    }
    let audience = if all {
        AudienceSpec::All
    } else if found.is_empty() {
        AudienceSpec::Expression(terms.join(" | "))
    } else {
        if !specs.is_empty() {
            refuse_mix(s, c, "users together with departments or tags")?;
        }
        let mut idxs: Vec<u32> = found.values().copied().collect();
        idxs.extend(super::resolve_union(s, ws, &specs)?.iter());
        audience_of(idxs)
    };
    // The same message to the same recipients within the interval is not
    // sent again: the key is reserved with the draft, atomically.
    let dup = bool_of(b, &["enable_duplicate_check"]).then(|| {
        let key =
            json!({"msgtype": msgtype, "msg": b.get(&msgtype), "touser": users, "toparty": parties, "totag": tags});
        let interval = int_of(b, &["duplicate_check_interval"]).unwrap_or(1800).clamp(1, 4 * 3600);
        (format!("wecom:{}", hex::encode(sha2::Sha256::digest(key.to_string().as_bytes()))), interval * 1000)
    });
    let sent = super::send(
        s,
        c,
        SendRequest {
            raw,
            audience,
            client_msg_id: None,
            priority: Priority::Broadcast,
            send_kind: "wecom",
            dup,
            sender: None,
            callback: false,
        },
    )?;
    let mut out = json!({"errcode": 0, "errmsg": "ok", "msgid": sent.id.to_string()});
    if !invalid_users.is_empty() {
        out["invaliduser"] = json!(invalid_users.join("|"));
    }
    if !invalid_parties.is_empty() {
        out["invalidparty"] = json!(invalid_parties.join("|"));
    }
    if !invalid_tags.is_empty() {
        out["invalidtag"] = json!(invalid_tags.join("|"));
    }
    Ok(out)
}

// Customer contact (客户联系): corp tags are two-level qunfa tags
// ("group/tag"), ids `et<id>`; mass sends to external contacts.

fn corp_id(v: &str) -> Option<i64> {
    v.trim().trim_start_matches("etg").trim_start_matches("et").parse().ok()
}

fn corp_tag_list(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let wanted: Vec<i64> = list_of(&req.body, &["tag_id"]).iter().filter_map(|t| corp_id(t)).collect();
    let tags = s.store.tags(c.ws())?;
    let mut groups = Vec::new();
    for g in tags.iter().filter(|t| t.parent_id.is_none()) {
        let children: Vec<Value> = tags
            .iter()
            .filter(|t| t.parent_id == Some(g.id))
            .filter(|t| wanted.is_empty() || wanted.contains(&t.id))
            .map(|t| {
                json!({"id": format!("et{}", t.id), "name": t.path.rsplit('/').next().unwrap_or(&t.path), "create_time": t.created_at / 1000, "order": 0, "deleted": false})
            })
            .collect();
        if children.is_empty() && !wanted.is_empty() {
            continue;
        }
        groups.push(json!({"group_id": format!("etg{}", g.id), "group_name": g.path, "create_time": g.created_at / 1000, "order": 0, "deleted": false, "tag": children}));
    }
    Ok(json!({"tag_group": groups}))
}

fn add_corp_tag(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let b = &req.body;
    let ws = c.ws();
    let group = match str_of(b, &["group_id"]).and_then(|g| corp_id(&g)) {
        Some(id) if s.store.tag_exists(ws, id)? => s.store.tag(ws, id)?,
        Some(_) => return Err(wx(40068, "invalid group_id")),
        None => {
            let name = str_of(b, &["group_name"]).ok_or_else(|| wx(40058, "group_id or group_name missing"))?;
            let path = TagPath::parse(&name).map_err(|code| api(ApiError::code(code)))?;
            match s.store.tag_by_path(ws, &path) {
                Ok(id) => s.store.tag(ws, id)?,
                Err(StoreError::NotFound) => s.store.create_tag(ws, &c.tier(s), &path, &c.actor, s.now())?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let mut created = Vec::new();
    for t in b.get("tag").and_then(Value::as_array).cloned().unwrap_or_default() {
        let name = str_of(&t, &["name"]).ok_or_else(|| wx(40058, "tag.name missing"))?;
        if name.chars().count() > 30 || name.contains('/') {
            return Err(wx(40058, format!("invalid tag name {name:?}: at most 30 characters, no /")));
        }
        let path = TagPath::parse(&format!("{}/{name}", group.path)).map_err(|code| api(ApiError::code(code)))?;
        if s.store.tag_by_path(ws, &path).is_ok() {
            return Err(wx(40071, format!("tag name exists: {name}")));
        }
        let tag = s.store.create_tag(ws, &c.tier(s), &path, &c.actor, s.now())?;
        created.push(json!({"id": format!("et{}", tag.id), "name": name, "create_time": tag.created_at / 1000, "order": int_of(&t, &["order"]).unwrap_or(0)}));
    }
    Ok(
        json!({"tag_group": {"group_id": format!("etg{}", group.id), "group_name": group.path, "create_time": group.created_at / 1000, "order": int_of(b, &["order"]).unwrap_or(0), "tag": created}}),
    )
}

fn mark_tag(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let b = &req.body;
    let ws = c.ws();
    let external = str_of(b, &["external_userid"]).ok_or_else(|| wx(40096, "external_userid missing"))?;
    let idx =
        contact_by_userid(s, c, &external)?.ok_or_else(|| wx(84061, format!("not external contact: {external}")))?;
    let tier = c.tier(s);
    for (names, add) in [(["add_tag"], true), (["remove_tag"], false)] {
        for t in list_of(b, &names) {
            let id = corp_id(&t).filter(|id| s.store.tag_exists(ws, *id).unwrap_or(false));
            let id = id.ok_or_else(|| wx(40068, format!("invalid tagid: {t}")))?;
            let change = if add { MembershipChange::Add(&[idx]) } else { MembershipChange::Remove(&[idx]) };
            s.store.tag_members(ws, &tier, id, change, &c.actor, s.now())?;
        }
    }
    Ok(json!({}))
}

fn add_msg_template(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let b = &req.body;
    let ws = c.ws();
    let externals = list_of(b, &["external_userid"]);
    if externals.len() > MAX_EXTERNAL_USERS {
        return Err(wx(
            40058,
            format!("invalid external_userid: {} ids, at most {MAX_EXTERNAL_USERS}", externals.len()),
        ));
    }
    let found = s.store.contacts_by_external_ids(ws, &externals)?;
    let fail_list: Vec<&str> = externals.iter().filter(|e| !found.contains_key(*e)).map(String::as_str).collect();
    // tag_filter: every group must match (AND); tags within a group are OR.
    let mut groups = Vec::new();
    if let Some(list) = b.pointer("/tag_filter/group_list").and_then(Value::as_array) {
        for g in list {
            let mut ors = Vec::new();
            for t in list_of(g, &["tag_list"]) {
                let id = corp_id(&t).filter(|id| s.store.tag_exists(ws, *id).unwrap_or(false));
                let id = id.ok_or_else(|| wx(40068, format!("invalid tagid: {t}")))?;
                ors.push(super::tag_term(&s.store.tag(ws, id)?.path));
            }
            if !ors.is_empty() {
                groups.push(format!("({})", ors.join(" | ")));
            }
        }
    }
    let mut raw = RawContent::default();
    let text = b.pointer("/text/content").and_then(Value::as_str).unwrap_or_default();
    if !text.trim().is_empty() {
        if text.len() > 4000 {
            return Err(wx(45002, "content size out of limit: at most 4000 bytes"));
        }
        raw.content_type = "text".into();
        raw.text = Some(text.to_owned());
    } else if let Some(a) = b.get("attachments").and_then(|a| a.get(0)) {
        let t = str_of(a, &["msgtype"]).unwrap_or_default();
        raw = content_of(a, &t)?;
    } else {
        return Err(wx(44004, "empty content"));
    }
    let audience = if externals.is_empty() {
        if groups.is_empty() {
            AudienceSpec::All
        } else {
            AudienceSpec::Expression(groups.join(" & "))
        }
    } else {
        if found.is_empty() {
            return Err(wx(41063, "no valid external_userid").with_fail_list(&fail_list));
        }
        let mut idxs: Vec<u32> = found.values().copied().collect();
        if !groups.is_empty() {
            refuse_mix(s, c, "external contacts filtered by tags")?;
            let e = super::super::routes::audiences::compile(s, ws, &groups.join(" & ")).map_err(api)?;
            let now = s.now();
            let tagged =
                s.store.with_audience(ws, |i| i.evaluate(&e, now))?.map_err(|_| wx(40068, "invalid tag_filter"))?;
            idxs.retain(|i| tagged.contains(*i));
        }
        audience_of(idxs)
    };
    let sender = str_of(b, &["sender"]);
    let sent = super::send(
        s,
        c,
        SendRequest {
            raw,
            audience,
            client_msg_id: None,
            priority: Priority::Broadcast,
            send_kind: "customer",
            dup: None,
            sender: sender.clone(),
            callback: false,
        },
    )?;
    Ok(json!({"errcode": 0, "errmsg": "ok", "fail_list": fail_list, "msgid": format!("msg{}", sent.id)}))
}

impl Wx {
    fn with_fail_list(mut self, list: &[&str]) -> Self {
        self.extra.insert("fail_list".into(), json!(list));
        self
    }
}

/// Cursor of the paged customer-send queries: the last id given.
fn cursor(req: &Req) -> Result<i64, Wx> {
    match req.field(&["cursor"]) {
        None => Ok(0),
        Some(c) => c.parse::<i64>().map_err(|_| wx(40058, "invalid cursor")),
    }
}

fn limit(req: &Req, max: i64) -> usize {
    int_of(&req.body, &["limit"]).unwrap_or(max).clamp(1, max) as usize
}

fn groupmsg_list(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let b = &req.body;
    let start = int_of(b, &["start_time"]).ok_or_else(|| wx(40058, "start_time missing"))? * 1000;
    let end = int_of(b, &["end_time"]).ok_or_else(|| wx(40058, "end_time missing"))? * 1000 + 1000;
    if end - start > 31 * 86_400_000 {
        return Err(wx(40058, "the time range is at most one month"));
    }
    let limit = limit(req, 100);
    let sends = s.store.compat_sends(c.ws(), "customer", start, end, cursor(req)?, limit)?;
    let mut list = Vec::new();
    for send in &sends {
        let bc = s.store.broadcast(c.ws(), send.broadcast_id)?;
        list.push(json!({
            "msgid": format!("msg{}", send.broadcast_id),
            "creator": send.sender.clone().unwrap_or_default(),
            "create_type": 0,
            "create_time": (send.created_at / 1000).to_string(),
            "text": {"content": bc.content.text.clone().unwrap_or_default()},
        }));
    }
    let next = if sends.len() == limit {
        sends.last().map(|x| x.broadcast_id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(json!({"next_cursor": next, "group_msg_list": list}))
}

fn groupmsg_task(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let bc = super::broadcast_of(s, c, req.field(&["msgid"]))?;
    let send = s.store.compat_send(c.ws(), bc.id)?.ok_or_else(|| wx(40058, "invalid msgid"))?;
    // One task: the sender's; done once every delivery is made.
    let status = i64::from(bc.state == qunfa_core::broadcast::BroadcastState::Completed);
    let task = json!({"userid": send.sender.unwrap_or_default(), "status": status, "send_time": bc.completed_at.unwrap_or(0) / 1000});
    Ok(json!({"next_cursor": "", "task_list": [task]}))
}

fn groupmsg_send_result(s: &Inner, c: &Caller, req: &Req) -> WxResult {
    let bc = super::broadcast_of(s, c, req.field(&["msgid"]))?;
    let send = s.store.compat_send(c.ws(), bc.id)?.ok_or_else(|| wx(40058, "invalid msgid"))?;
    let limit = limit(req, 1000);
    let after = match req.field(&["cursor"]) {
        None => None,
        Some(cur) => Some(cur.parse::<u32>().map_err(|_| wx(40058, "invalid cursor"))?),
    };
    let rows = s.store.deliveries(bc.id, after.map(|i| ("inbox".to_owned(), i)), limit)?;
    let idxs: Vec<u32> = rows.iter().map(|d| d.contact_idx).collect();
    let ids: std::collections::HashMap<u32, String> = s.store.external_ids_of(c.ws(), &idxs)?.into_iter().collect();
    let list: Vec<Value> = rows
        .iter()
        .map(|d| {
            // 0 not sent yet, 1 sent, 2 not a friend any more, 3 over the receiver's limit.
            let status = match d.state.as_str() {
                "delivered" | "read" | "sent" => 1,
                "filtered" => 3,
                "queued" => 0,
                _ => 2,
            };
            json!({
                "external_userid": ids.get(&d.contact_idx).cloned().unwrap_or_default(),
                "userid": send.sender.clone().unwrap_or_default(),
                "status": status,
                "send_time": d.delivered_at.or(d.sent_at).unwrap_or(0) / 1000,
            })
        })
        .collect();
    let next = if rows.len() == limit {
        rows.last().map(|d| d.contact_idx.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(json!({"next_cursor": next, "send_list": list}))
}
