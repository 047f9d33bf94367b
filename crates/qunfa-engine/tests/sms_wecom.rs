//! The SMS and WeCom senders against their loopback stand-ins
//! (`qunfa_testkit::{sms, wecom}`): what goes on the wire, and how every
//! answer becomes an outcome.

use std::{collections::HashMap, time::Duration};

use qunfa_core::{
    channel::{SmsSettings, WecomSettings},
    contact::Channel,
    Code,
};
use qunfa_engine::{sms::SmsSender, wecom::WecomSender};
use qunfa_store::queue::{ExternalBatch, Outgoing, SendOutcome};
use qunfa_testkit::{
    sms::{ReceiptSink, SmsFailure, SmsProvider},
    wecom::{WecomApi, WecomFailure},
};

const BROADCAST: i64 = 7;
const API_KEY: &str = "sk-test-key";
const CORP_ID: &str = "ww0123456789";
const CORP_SECRET: &str = "corp-secret";
const AGENT_ID: i64 = 1_000_002;

fn phone(i: u32) -> String {
    format!("+86138{i:08}")
}

fn item(channel: Channel, idx: u32, address: Option<String>, text: &str) -> Outgoing {
    Outgoing::new(BROADCAST, channel, idx, address, Some(text.to_owned()))
}

fn batch(channel: Channel, items: Vec<Outgoing>) -> ExternalBatch {
    ExternalBatch::synthetic(BROADCAST, 1, channel, r#"{"type":"text"}"#.into(), None, items)
}

fn sms_batch(n: u32) -> ExternalBatch {
    batch(Channel::Sms, (0..n).map(|i| item(Channel::Sms, i, Some(phone(i)), &format!("hello {i}"))).collect())
}

fn sms_settings(provider: &SmsProvider, batch_size: u32) -> SmsSettings {
    SmsSettings {
        allow_private_networks: true,
        base_url: provider.url(),
        api_key: API_KEY.into(),
        sign_name: "群发".into(),
        template_id: "SMS_0001".into(),
        batch_size,
        timeout_ms: 10_000,
    }
}

fn wecom_settings(api: &WecomApi, batch_size: u32) -> WecomSettings {
    WecomSettings {
        allow_private_networks: true,
        base_url: api.url(),
        corp_id: CORP_ID.into(),
        corp_secret: CORP_SECRET.into(),
        agent_id: AGENT_ID,
        batch_size,
        duplicate_check_interval: 1800,
        timeout_ms: 10_000,
    }
}

fn by_idx(outcomes: Vec<(u32, SendOutcome)>) -> HashMap<u32, SendOutcome> {
    let n = outcomes.len();
    let map: HashMap<u32, SendOutcome> = outcomes.into_iter().collect();
    assert_eq!(map.len(), n, "one outcome per message");
    map
}

fn code(outcome: &SendOutcome) -> Option<Code> {
    match outcome {
        SendOutcome::Rejected(code, _) => Some(*code),
        _ => None,
    }
}

fn is_retry(outcome: &SendOutcome) -> bool {
    matches!(outcome, SendOutcome::Retry(_))
}

fn short_enough(outcomes: &HashMap<u32, SendOutcome>) {
    for o in outcomes.values() {
        if let SendOutcome::Rejected(_, why) | SendOutcome::Retry(why) = o {
            assert!(!why.is_empty() && why.chars().count() <= 200, "outcome text: {why:?}");
        }
    }
}

// ---------------------------------------------------------------- SMS

#[tokio::test]
async fn sms_batches_are_split_per_batch_size_with_sign_template_and_key() {
    let provider = SmsProvider::start(API_KEY).await;
    let sender = SmsSender::new().unwrap();
    let outcomes = by_idx(sender.send(&sms_batch(5), &sms_settings(&provider, 2), None).await);

    let requests = provider.requests();
    assert_eq!(requests.len(), 3);
    let mut sizes: Vec<usize> = requests.iter().map(|r| r.messages.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 2, 2]);
    for r in &requests {
        assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test-key"));
        assert_eq!(r.sign_name, "群发");
        assert_eq!(r.template_id, "SMS_0001");
        assert_eq!(r.callback_url, None, "no callback_url when there is none");
    }
    let mut messages: Vec<_> = requests.iter().flat_map(|r| r.messages.clone()).collect();
    messages.sort_by(|a, b| a.out_id.cmp(&b.out_id));
    for (i, m) in messages.iter().enumerate() {
        let i = i as u32;
        assert_eq!(m.phone, phone(i));
        assert_eq!(m.out_id, format!("qf-7-{i}-sms"));
        assert_eq!(m.param("text"), format!("hello {i}"));
        assert_eq!(m.param("name"), format!("Contact {i}"));
    }

    assert_eq!(provider.sent_count(), 5);
    let ids: HashMap<String, String> = provider.sent().into_iter().map(|s| (s.out_id, s.message_id)).collect();
    for i in 0..5 {
        assert_eq!(outcomes[&i], SendOutcome::Accepted(ids[&format!("qf-7-{i}-sms")].clone()));
    }
}

#[tokio::test]
async fn sms_per_number_results_are_mapped_and_bad_numbers_are_not_sent() {
    let provider = SmsProvider::start(API_KEY).await;
    provider.set_invalid([phone(1)]);
    provider.set_blacklisted([phone(2)]);
    provider.set_throttled([phone(3)]);
    provider.set_omitted([phone(4)]);
    let items = vec![
        item(Channel::Sms, 0, Some(phone(0)), "hi"),
        item(Channel::Sms, 1, Some(phone(1)), "hi"),
        item(Channel::Sms, 2, Some(phone(2)), "hi"),
        item(Channel::Sms, 3, Some(phone(3)), "hi"),
        item(Channel::Sms, 4, Some(phone(4)), "hi"),
        item(Channel::Sms, 5, Some("12ab34567".into()), "hi"),
        item(Channel::Sms, 6, Some("+12345".into()), "hi"),
        item(Channel::Sms, 7, None, "hi"),
    ];
    let sender = SmsSender::new().unwrap();
    let outcomes = by_idx(sender.send(&batch(Channel::Sms, items), &sms_settings(&provider, 100), None).await);
    short_enough(&outcomes);

    assert!(matches!(&outcomes[&0], SendOutcome::Accepted(id) if !id.is_empty()));
    assert_eq!(code(&outcomes[&1]), Some(Code::AddressInvalid));
    assert_eq!(code(&outcomes[&2]), Some(Code::DeliveryRejected));
    assert!(is_retry(&outcomes[&3]), "{:?}", outcomes[&3]);
    assert!(is_retry(&outcomes[&4]), "missing from results: {:?}", outcomes[&4]);
    assert_eq!(code(&outcomes[&5]), Some(Code::AddressInvalid));
    assert_eq!(code(&outcomes[&6]), Some(Code::AddressInvalid), "5 digits is too short");
    assert_eq!(code(&outcomes[&7]), Some(Code::ChannelNoAddress));

    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    let phones: Vec<&str> = requests[0].messages.iter().map(|m| m.phone.as_str()).collect();
    assert_eq!(phones, [phone(0), phone(1), phone(2), phone(3), phone(4)], "local refusals are never sent");
    assert_eq!(provider.sent_count(), 1);
}

#[tokio::test]
async fn sms_receipts_reach_the_callback_with_the_accepted_message_ids() {
    let provider = SmsProvider::start(API_KEY).await;
    provider.set_receipt_delay(Some(Duration::from_millis(20)));
    provider.set_receipt_failed([phone(2)]);
    let sink = ReceiptSink::start().await;
    let sender = SmsSender::new().unwrap();
    let outcomes = by_idx(sender.send(&sms_batch(4), &sms_settings(&provider, 3), Some(&sink.url())).await);
    assert!(provider.requests().iter().all(|r| r.callback_url.as_deref() == Some(sink.url().as_str())));

    let receipts = sink.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(receipts.len(), 4, "receipts: {receipts:?}; errors: {:?}", provider.receipt_errors());
    for r in &receipts {
        let out_id = r["out_id"].as_str().unwrap();
        let idx: u32 = out_id.split('-').nth(2).unwrap().parse().unwrap();
        assert_eq!(out_id, format!("qf-7-{idx}-sms"));
        assert_eq!(outcomes[&idx], SendOutcome::Accepted(r["message_id"].as_str().unwrap().to_owned()));
        assert_eq!(r["phone"].as_str(), Some(phone(idx).as_str()));
        let expected = if idx == 2 { "FAILED" } else { "DELIVERED" };
        assert_eq!(r["status"].as_str(), Some(expected));
        assert!(r["err_code"].is_string());
        assert!(r["reported_at"].as_u64().unwrap() > 1_600_000_000);
    }
}

#[tokio::test]
async fn sms_retry_after_a_lost_answer_sends_no_second_sms_and_keeps_the_message_id() {
    let provider = SmsProvider::start(API_KEY).await;
    provider.fail_next(1, SmsFailure::AnswerLost);
    let sender = SmsSender::new().unwrap();
    let mut settings = sms_settings(&provider, 10);
    settings.timeout_ms = 300;
    let batch = sms_batch(3);

    let first = by_idx(sender.send(&batch, &settings, None).await);
    assert!(first.values().all(is_retry), "{first:?}");
    short_enough(&first);
    assert_eq!(provider.sent_count(), 3, "the provider sent them; only the answer was lost");
    let ids: HashMap<String, String> = provider.sent().into_iter().map(|s| (s.out_id, s.message_id)).collect();

    settings.timeout_ms = 10_000;
    let again = by_idx(sender.send(&batch, &settings, None).await);
    assert_eq!(provider.requests().len(), 2);
    assert_eq!(provider.sent_count(), 3, "the repeated out_ids were not sent again");
    for i in 0..3 {
        assert_eq!(again[&i], SendOutcome::Accepted(ids[&format!("qf-7-{i}-sms")].clone()));
    }
}

#[tokio::test]
async fn sms_wrong_key_is_channel_auth() {
    let provider = SmsProvider::start(API_KEY).await;
    let mut settings = sms_settings(&provider, 10);
    settings.api_key = "wrong".into();
    let outcomes = by_idx(SmsSender::new().unwrap().send(&sms_batch(3), &settings, None).await);
    assert!(outcomes.values().all(|o| code(o) == Some(Code::ChannelAuth)), "{outcomes:?}");
    short_enough(&outcomes);
    assert_eq!(provider.sent_count(), 0);
}

#[tokio::test]
async fn sms_server_errors_and_hangs_are_retried_other_4xx_rejected() {
    let provider = SmsProvider::start(API_KEY).await;
    let sender = SmsSender::new().unwrap();
    let mut settings = sms_settings(&provider, 10);
    settings.timeout_ms = 300;

    for failure in [SmsFailure::Status(500), SmsFailure::Status(429), SmsFailure::Hang] {
        provider.fail_next(1, failure);
        let outcomes = by_idx(sender.send(&sms_batch(2), &settings, None).await);
        assert!(outcomes.values().all(is_retry), "{failure:?}: {outcomes:?}");
        short_enough(&outcomes);
    }
    provider.fail_next(1, SmsFailure::Status(400));
    let outcomes = by_idx(sender.send(&sms_batch(2), &settings, None).await);
    for o in outcomes.values() {
        assert!(
            matches!(o, SendOutcome::Rejected(Code::DeliveryRejected, why) if why.contains("injected failure")),
            "{o:?}"
        );
    }
    assert_eq!(provider.sent_count(), 0);

    settings.timeout_ms = 10_000;
    let outcomes = by_idx(sender.send(&sms_batch(2), &settings, None).await);
    assert!(outcomes.values().all(|o| matches!(o, SendOutcome::Accepted(_))), "{outcomes:?}");
}

#[tokio::test]
async fn sms_unreachable_provider_is_retry() {
    let provider = SmsProvider::start(API_KEY).await;
    let settings = sms_settings(&provider, 10);
    drop(provider);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcomes = by_idx(SmsSender::new().unwrap().send(&sms_batch(2), &settings, None).await);
    assert!(outcomes.values().all(is_retry), "{outcomes:?}");
}

// -------------------------------------------------------------- WeCom

fn wecom_batch(users: &[&str], text: &str) -> ExternalBatch {
    let items =
        users.iter().enumerate().map(|(i, u)| item(Channel::Wecom, i as u32, Some((*u).to_owned()), text)).collect();
    batch(Channel::Wecom, items)
}

fn all_delivered(outcomes: &HashMap<u32, SendOutcome>) -> bool {
    outcomes.values().all(|o| *o == SendOutcome::Delivered)
}

#[tokio::test]
async fn wecom_sends_the_documented_request() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let outcomes = by_idx(
        WecomSender::new()
            .unwrap()
            .send(&wecom_batch(&["zhangsan", "lisi"], "你好"), &wecom_settings(&api, 1000))
            .await,
    );
    assert!(all_delivered(&outcomes), "{outcomes:?}");
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert!(r.access_token.as_deref().is_some_and(|t| t.starts_with("tok-")));
    assert_eq!(
        r.body,
        serde_json::json!({
            "touser": "zhangsan|lisi",
            "msgtype": "text",
            "agentid": AGENT_ID,
            "text": {"content": "你好"},
            "safe": 0,
            "enable_duplicate_check": 1,
            "duplicate_check_interval": 1800,
        })
    );
    assert_eq!(api.delivered(), [("zhangsan".to_owned(), "你好".to_owned()), ("lisi".to_owned(), "你好".to_owned())]);
}

#[tokio::test]
async fn wecom_token_is_fetched_once_for_many_batches_and_concurrent_requests() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let sender = WecomSender::new().unwrap();
    // Batch size 2: five requests of each batch run concurrently.
    let settings = wecom_settings(&api, 2);
    let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let (first, second) = (wecom_batch(&users, "first"), wecom_batch(&users, "second"));
    let (a, b) = tokio::join!(sender.send(&first, &settings), sender.send(&second, &settings));
    assert!(all_delivered(&by_idx(a)) && all_delivered(&by_idx(b)));
    let c = by_idx(sender.send(&wecom_batch(&users, "third"), &settings).await);
    assert!(all_delivered(&c));
    assert_eq!(api.requests().len(), 15);
    assert_eq!(api.gettoken_calls(), 1);
}

#[tokio::test]
async fn wecom_expired_or_unknown_token_is_refreshed_and_the_message_delivered() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let sender = WecomSender::new().unwrap();
    let settings = wecom_settings(&api, 1000);
    assert!(all_delivered(&by_idx(sender.send(&wecom_batch(&["u1"], "one"), &settings).await)));
    assert_eq!(api.gettoken_calls(), 1);

    api.expire_tokens();
    assert!(all_delivered(&by_idx(sender.send(&wecom_batch(&["u1"], "two"), &settings).await)));
    assert_eq!(api.gettoken_calls(), 2);
    let requests = api.requests();
    assert_eq!(requests.len(), 3, "the request with the expired token is sent again");
    assert_ne!(requests[1].access_token, requests[2].access_token);

    api.invalidate_tokens();
    assert!(all_delivered(&by_idx(sender.send(&wecom_batch(&["u1"], "three"), &settings).await)));
    assert_eq!(api.gettoken_calls(), 3);
    let contents: Vec<String> = api.delivered().into_iter().map(|(_, c)| c).collect();
    assert_eq!(contents, ["one", "two", "three"]);
}

#[tokio::test]
async fn wecom_2500_recipients_go_in_3_requests_of_at_most_1000() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let users: Vec<String> = (0..2500).map(|i| format!("user{i}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    // A batch_size over WeCom's limit is held to 1,000.
    let outcomes =
        by_idx(WecomSender::new().unwrap().send(&wecom_batch(&users, "通知"), &wecom_settings(&api, 5000)).await);
    assert_eq!(outcomes.len(), 2500);
    assert!(all_delivered(&outcomes));
    let mut sizes: Vec<usize> = api.requests().iter().map(|r| r.touser.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [500, 1000, 1000]);
    assert_eq!(api.delivered_count(), 2500);
}

#[tokio::test]
async fn wecom_recipients_are_grouped_by_their_rendered_text() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let items = vec![
        item(Channel::Wecom, 0, Some("a".into()), "Hello A-team"),
        item(Channel::Wecom, 1, Some("b".into()), "Hello B-team"),
        item(Channel::Wecom, 2, Some("c".into()), "Hello A-team"),
        item(Channel::Wecom, 3, Some("d".into()), "Hello B-team"),
        item(Channel::Wecom, 4, Some("e".into()), "Hello A-team"),
    ];
    let outcomes =
        by_idx(WecomSender::new().unwrap().send(&batch(Channel::Wecom, items), &wecom_settings(&api, 2)).await);
    assert!(all_delivered(&outcomes));
    let mut requests: Vec<(String, String)> =
        api.requests().iter().map(|r| (r.content.clone(), r.touser.join("|"))).collect();
    requests.sort();
    assert_eq!(
        requests,
        [
            ("Hello A-team".to_owned(), "a|c".to_owned()),
            ("Hello A-team".to_owned(), "e".to_owned()),
            ("Hello B-team".to_owned(), "b|d".to_owned()),
        ]
    );
}

#[tokio::test]
async fn wecom_invalid_users_are_address_invalid_and_81013_rejects_all() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    api.set_directory(["alice", "bob"]);
    let sender = WecomSender::new().unwrap();
    let settings = wecom_settings(&api, 1000);

    let outcomes = by_idx(sender.send(&wecom_batch(&["alice", "ghost", "bob", "nobody"], "hi"), &settings).await);
    assert_eq!(outcomes[&0], SendOutcome::Delivered);
    assert_eq!(code(&outcomes[&1]), Some(Code::AddressInvalid));
    assert_eq!(outcomes[&2], SendOutcome::Delivered);
    assert_eq!(code(&outcomes[&3]), Some(Code::AddressInvalid));
    short_enough(&outcomes);

    let outcomes = by_idx(sender.send(&wecom_batch(&["ghost", "nobody"], "hi again"), &settings).await);
    assert!(outcomes.values().all(|o| code(o) == Some(Code::AddressInvalid)), "{outcomes:?}");

    let long = "x".repeat(65);
    let outcomes = by_idx(sender.send(&wecom_batch(&["", "a|b", &long], "local"), &settings).await);
    assert!(outcomes.values().all(|o| code(o) == Some(Code::AddressInvalid)), "{outcomes:?}");
    let outcomes =
        by_idx(sender.send(&batch(Channel::Wecom, vec![item(Channel::Wecom, 0, None, "x")]), &settings).await);
    assert_eq!(code(&outcomes[&0]), Some(Code::ChannelNoAddress));
    assert_eq!(api.requests().len(), 2, "ids that cannot be valid are never sent");
}

#[tokio::test]
async fn wecom_rate_limits_busy_and_server_errors_are_retried() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let sender = WecomSender::new().unwrap();
    let mut settings = wecom_settings(&api, 1000);
    settings.timeout_ms = 300;
    for failure in [
        WecomFailure::Errcode(45009),
        WecomFailure::Errcode(45033),
        WecomFailure::Errcode(-1),
        WecomFailure::Status(500),
        WecomFailure::Hang,
    ] {
        api.fail_next(1, failure);
        let outcomes = by_idx(sender.send(&wecom_batch(&["u1", "u2"], "retry me"), &settings).await);
        assert!(outcomes.values().all(is_retry), "{failure:?}: {outcomes:?}");
        short_enough(&outcomes);
    }
    assert_eq!(api.delivered_count(), 0);
    settings.timeout_ms = 10_000;
    let outcomes = by_idx(sender.send(&wecom_batch(&["u1", "u2"], "retry me"), &settings).await);
    assert!(all_delivered(&outcomes));
}

#[tokio::test]
async fn wecom_other_errcodes_are_rejected_with_the_errcode() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let mut settings = wecom_settings(&api, 1000);
    settings.agent_id = 42;
    let outcomes = by_idx(WecomSender::new().unwrap().send(&wecom_batch(&["u1"], "hi"), &settings).await);
    assert_eq!(
        outcomes[&0],
        SendOutcome::Rejected(Code::DeliveryRejected, "WeCom errcode 40056: invalid agentid".into())
    );
}

#[tokio::test]
async fn wecom_bad_secret_or_corp_id_is_channel_auth() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let sender = WecomSender::new().unwrap();
    let mut settings = wecom_settings(&api, 1000);
    settings.corp_secret = "wrong".into();
    let outcomes = by_idx(sender.send(&wecom_batch(&["u1", "u2"], "hi"), &settings).await);
    assert!(outcomes.values().all(|o| code(o) == Some(Code::ChannelAuth)), "{outcomes:?}");
    short_enough(&outcomes);

    let mut settings = wecom_settings(&api, 1000);
    settings.corp_id = "ww-other".into();
    let outcomes = by_idx(sender.send(&wecom_batch(&["u1"], "hi"), &settings).await);
    assert_eq!(code(&outcomes[&0]), Some(Code::ChannelAuth));
    assert!(api.requests().is_empty());

    // gettoken being busy is not a credentials problem.
    api.fail_next_gettoken(1, WecomFailure::Errcode(-1));
    let outcomes = by_idx(sender.send(&wecom_batch(&["u1"], "hi"), &wecom_settings(&api, 1000)).await);
    assert!(is_retry(&outcomes[&0]), "{outcomes:?}");
}

#[tokio::test]
async fn wecom_text_over_2048_bytes_is_rejected_without_a_request() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    // 683 three-byte characters: 2,049 bytes.
    let long = "字".repeat(683);
    let items = vec![item(Channel::Wecom, 0, Some("u1".into()), &long)];
    let outcomes =
        by_idx(WecomSender::new().unwrap().send(&batch(Channel::Wecom, items), &wecom_settings(&api, 1000)).await);
    assert_eq!(code(&outcomes[&0]), Some(Code::DeliveryRejected));
    short_enough(&outcomes);
    assert!(api.requests().is_empty());
    assert_eq!(api.gettoken_calls(), 0);
}

#[tokio::test]
async fn wecom_duplicate_check_drops_a_resent_request() {
    let api = WecomApi::start(CORP_ID, CORP_SECRET, AGENT_ID).await;
    let sender = WecomSender::new().unwrap();
    let settings = wecom_settings(&api, 1000);
    let batch = wecom_batch(&["u1", "u2"], "same text");
    assert!(all_delivered(&by_idx(sender.send(&batch, &settings).await)));
    // As after a lost answer: the engine sends the batch again.
    assert!(all_delivered(&by_idx(sender.send(&batch, &settings).await)));
    assert_eq!(api.requests().len(), 2);
    assert_eq!(api.delivered_count(), 2, "WeCom's duplicate check dropped the repeat");
}
