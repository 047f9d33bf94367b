"""The WeChat-compatible API driven by the unmodified wechatpy SDK.

Only the base URL and the token URL are overridden (in subclasses); every
call below is wechatpy's own code. Run by tests/compat/run.sh, which starts
`qunfa serve` and sets QUNFA_URL and QUNFA_ADMIN_TOKEN.
"""

import base64
import http.server
import os
import queue
import threading
import time
import unittest

import requests
from wechatpy import WeChatClient as OfficialAccountClient
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise import WeChatClient as WorkClient
from wechatpy.events import MassSendJobFinishEvent
from wechatpy.exceptions import WeChatClientException

BASE = os.environ["QUNFA_URL"].rstrip("/")
ADMIN = os.environ["QUNFA_ADMIN_TOKEN"]
API = BASE + "/cgi-bin/"


class QunfaWork(WorkClient):
    """wechatpy's WeCom client, pointed at qunfa."""

    API_BASE_URL = API

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=API + "gettoken", params={"corpid": self.corp_id, "corpsecret": self.secret}
        )


class QunfaOfficialAccount(OfficialAccountClient):
    """wechatpy's Official Account client, pointed at qunfa."""

    API_BASE_URL = API

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=API + "token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )


CORP_ID, CORP_SECRET = "wwqunfatest01", "corp-secret-0123456789abcdefghijklmnop"
APP_ID, APP_SECRET = "wxqunfatest01", "app-secret-0123456789abcdefghijklmnopq"
CB_TOKEN = "qunfaCallbackToken"
CB_AES_KEY = base64.b64encode(bytes(range(32))).decode()[:43]
BLOCKED = "高价收ＵＳＤＴ，当天结算，稳赚不赔"


def openid(i):
    """OpenIDs of 28 characters, the shape wechatpy's preview expects."""
    return "oQunfa%022d" % i


def v1(method, path, key, body=None):
    r = requests.request(method, BASE + path, headers={"Authorization": "Bearer " + key}, json=body, timeout=30)
    assert r.status_code < 300, (r.status_code, r.text)
    return r.json() if r.text else None


def workspace(kind, name, plan=None):
    body = {"name": name, "kind": kind}
    if plan:
        body["plan"] = plan
    return v1("POST", "/v1/workspaces", ADMIN, body)["api_key"]


class Receiver(http.server.BaseHTTPRequestHandler):
    """The integrator's callback endpoint: keeps what it was sent."""

    received = queue.Queue()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.received.put((self.path, body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"success")

    def log_message(self, *args):
        pass


def setUpModule():
    global WORK_KEY, OA_KEY, RECEIVER
    RECEIVER = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=RECEIVER.serve_forever, daemon=True).start()
    callback = "http://127.0.0.1:%d/wechat/callback" % RECEIVER.server_address[1]

    WORK_KEY = workspace("enterprise", "兼容测试企业")
    v1("PUT", "/v1/compat/wecom", WORK_KEY, {"app_id": CORP_ID, "secret": CORP_SECRET})
    # External contacts are qunfa contacts too (their external id is the external_userid).
    lines = "".join(
        '{"external_id": "wmExt%03d", "name": "客户%d"}\n' % (i, i) for i in range(5)
    )
    r = requests.post(
        BASE + "/v1/contacts/import",
        headers={"Authorization": "Bearer " + WORK_KEY, "Content-Type": "application/x-ndjson"},
        data=lines.encode(),
        timeout=30,
    )
    assert r.status_code == 200, r.text

    OA_KEY = workspace("api", "兼容测试公众号", plan="pro")
    v1(
        "PUT",
        "/v1/compat/oa",
        OA_KEY,
        {
            "app_id": APP_ID,
            "secret": APP_SECRET,
            "callback_url": callback,
            "callback_token": CB_TOKEN,
            "encoding_aes_key": CB_AES_KEY,
        },
    )
    lines = "".join('{"external_id": "%s", "name": "粉丝%d"}\n' % (openid(i), i) for i in range(12))
    r = requests.post(
        BASE + "/v1/contacts/import",
        headers={"Authorization": "Bearer " + OA_KEY, "Content-Type": "application/x-ndjson"},
        data=lines.encode(),
        timeout=30,
    )
    assert r.status_code == 200, r.text


def tearDownModule():
    RECEIVER.shutdown()


class Errors(unittest.TestCase):
    def assertErrcode(self, code, fn, *args, **kwargs):
        with self.assertRaises(WeChatClientException) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.errcode, code, ctx.exception.errmsg)
        return ctx.exception

    def test_tokens(self):
        self.assertErrcode(40001, QunfaWork(CORP_ID, "wrong-secret-000").fetch_access_token)
        self.assertErrcode(40013, QunfaWork("wwnosuchcorp", CORP_SECRET).fetch_access_token)
        self.assertErrcode(40001, QunfaOfficialAccount(APP_ID, "wrong-secret-000").fetch_access_token)
        self.assertErrcode(40013, QunfaOfficialAccount("wxnosuchapp", APP_SECRET).fetch_access_token)
        token = QunfaWork(CORP_ID, CORP_SECRET).fetch_access_token()
        self.assertEqual(token["expires_in"], 7200)
        oa = QunfaOfficialAccount(APP_ID, APP_SECRET).fetch_access_token()
        self.assertEqual(oa["expires_in"], 7200)
        # A token wechatpy did not fetch: no retry, the errcode of WeChat.
        bogus = QunfaWork(CORP_ID, CORP_SECRET, access_token="not-a-token", auto_retry=False)
        self.assertErrcode(40014, bogus.user.get, "anyone")
        stale = QunfaOfficialAccount(APP_ID, APP_SECRET, access_token="qfo" + "x" * 96, auto_retry=False)
        self.assertErrcode(40001, stale.tag.get)
        # With auto_retry (the default) wechatpy fetches a token and retries.
        self.assertIsInstance(QunfaWork(CORP_ID, CORP_SECRET, access_token="not-a-token").tag.list(), list)

    def test_wire_format(self):
        # No token: 41001, HTTP 200, JSON.
        r = requests.get(API + "user/get", timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertTrue(r.headers["content-type"].startswith("application/json"))
        self.assertEqual(r.json()["errcode"], 41001)
        r = requests.get(API + "token", params={"grant_type": "password", "appid": APP_ID, "secret": APP_SECRET}, timeout=10)
        self.assertEqual(r.json()["errcode"], 40002)
        r = requests.get(API + "gettoken", params={"corpid": CORP_ID}, timeout=10)
        self.assertEqual(r.json()["errcode"], 41004)
        # JSON without a Content-Type, extra fields, extra parameters.
        token = requests.get(API + "gettoken", params={"corpid": CORP_ID, "corpsecret": CORP_SECRET, "x": "1"}, timeout=10).json()["access_token"]
        r = requests.post(API + "tag/list", params={"access_token": token, "debug": "1"}, data=b'{"extra": true}', timeout=10)
        self.assertEqual(r.json()["errcode"], 0, r.text)
        r = requests.post(API + "message/send", params={"access_token": token}, data=b"{not json", timeout=10)
        self.assertEqual(r.json()["errcode"], 47001)


class WeCom(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = QunfaWork(CORP_ID, CORP_SECRET)
        cls.dept = cls.c.department.create("销售部", parent_id=1)["id"]
        for uid, name in [("zhangsan", "张三"), ("lisi", "李四"), ("wangwu", "王五")]:
            cls.c.user.create(uid, name, department=[cls.dept], mobile="1380000%04d" % len(uid), email=uid + "@example.com")
        cls.c.user.create("zhaoliu", "赵六", department=[1])
        cls.tag = cls.c.tag.create("VIP")["tagid"]

    def test_directory(self):
        c = self.c
        depts = c.department.get()
        self.assertIn(1, [d["id"] for d in depts])
        self.assertIn({"id": self.dept, "name": "销售部", "parentid": 1}, [{k: d[k] for k in ("id", "name", "parentid")} for d in depts])
        user = c.user.get("zhangsan")
        self.assertEqual((user["name"], user["department"], user["email"]), ("张三", [self.dept], "zhangsan@example.com"))
        simple = c.department.get_users(self.dept)
        self.assertEqual(sorted(u["userid"] for u in simple), ["lisi", "wangwu", "zhangsan"])
        detailed = c.user.list(self.dept)
        self.assertTrue(all("mobile" in u for u in detailed))
        everyone = c.user.list(1, fetch_child=True, simple=True)
        self.assertTrue({"zhangsan", "zhaoliu"} <= {u["userid"] for u in everyone})
        with self.assertRaises(WeChatClientException) as e:
            c.user.create("zhangsan", "又一个张三")
        self.assertEqual(e.exception.errcode, 60102)
        with self.assertRaises(WeChatClientException) as e:
            c.user.get("nobody")
        self.assertEqual(e.exception.errcode, 60111)
        with self.assertRaises(WeChatClientException) as e:
            c.department.create("无处", parent_id=987654)
        self.assertEqual(e.exception.errcode, 60003)

    def test_tags(self):
        c = self.c
        r = c.tag.add_users(self.tag, ["zhangsan", "lisi", "ghost"])
        self.assertEqual(r["invalidlist"], "ghost")
        members = c.tag.get_users(self.tag)
        self.assertEqual(members["tagname"], "VIP")
        self.assertEqual(sorted(u["userid"] for u in members["userlist"]), ["lisi", "zhangsan"])
        self.assertIn({"tagid": self.tag, "tagname": "VIP"}, c.tag.list())
        with self.assertRaises(WeChatClientException) as e:
            c.tag.create("VIP")
        self.assertEqual(e.exception.errcode, 40071)
        with self.assertRaises(WeChatClientException) as e:
            c.tag.get_users(99999999)
        self.assertEqual(e.exception.errcode, 40068)

    def test_message_send(self):
        c = self.c
        r = c.message.send_text(1000002, ["zhangsan", "lisi", "ghost"], "今天下午三点开会")
        self.assertEqual(r["invaliduser"], "ghost")
        self.assertTrue(r["msgid"])
        r = c.message.send_text(1000002, [], "部门通知", party_ids=[str(self.dept), "424242"], tag_ids=[str(self.tag)])
        self.assertEqual(r["invalidparty"], "424242")
        r = c.message.send_text(1000002, "@all", "全员通知")
        self.assertTrue(r["msgid"])
        c.message.send_text_card(1000002, ["zhangsan"], "领奖通知", "恭喜中奖", "https://example.com/prize")
        c.message.send_markdown(1000002, ["zhangsan"], "**加粗** 的通知")
        c.message.send_articles(1000002, ["lisi"], [{"title": "新品", "description": "看看", "url": "https://example.com/n", "image": "https://example.com/n.png"}])
        # Limits and refusals, each with WeChat's errcode.
        for code, kwargs in [
            (81013, dict(user_ids=["ghost1", "ghost2"], content="无人")),
            (45002, dict(user_ids=["zhangsan"], content="长" * 683 + "xx")),  # 2,051 bytes
            (40058, dict(user_ids=["u%d" % i for i in range(1001)], content="太多")),
            (87014, dict(user_ids=["zhangsan"], content=BLOCKED)),
        ]:
            with self.assertRaises(WeChatClientException) as e:
                c.message.send_text(1000002, **kwargs)
            self.assertEqual(e.exception.errcode, code, e.exception.errmsg)
        # The same message within the interval is sent once.
        msg = {"msgtype": "text", "text": {"content": "只发一次"}, "enable_duplicate_check": 1, "duplicate_check_interval": 600}
        first = c.message.send(1000002, ["wangwu"], msg=msg)
        again = c.message.send(1000002, ["wangwu"], msg=msg)
        self.assertEqual(first["msgid"], again["msgid"])
        # Recall (the generic post of the same client: wechatpy 1.8 has no helper).
        r = c.message.send_text(1000002, ["zhaoliu"], "发错了")
        self.assertEqual(c.post("message/recall", data={"msgid": r["msgid"]})["errcode"], 0)
        with self.assertRaises(WeChatClientException) as e:
            c.post("message/recall", data={"msgid": r["msgid"]})
        self.assertEqual(e.exception.errcode, 40058)

    def test_media(self):
        c = self.c
        png = base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
        )
        import io

        up = c.media.upload("image", io.BytesIO(png))
        self.assertEqual(up["type"], "image")
        r = c.message.send_image(1000002, ["zhangsan"], up["media_id"])
        self.assertTrue(r["msgid"])
        with self.assertRaises(WeChatClientException) as e:
            c.message.send_image(1000002, ["zhangsan"], "0" * 64)
        self.assertEqual(e.exception.errcode, 40007)

    def test_customer_mass_send(self):
        c = self.c
        group = c.external_contact.add_corp_tag(None, "客户等级", 0, [{"name": "金牌"}, {"name": "银牌"}])["tag_group"]
        gold = group["tag"][0]["id"]
        listed = c.external_contact.get_corp_tag_list()["tag_group"]
        self.assertIn("客户等级", [g["group_name"] for g in listed])
        for ext in ["wmExt000", "wmExt001", "wmExt002"]:
            c.external_contact.mark_tag("zhangsan", ext, add_tag=[gold])
        with self.assertRaises(WeChatClientException) as e:
            c.external_contact.mark_tag("zhangsan", "wmNobody", add_tag=[gold])
        self.assertEqual(e.exception.errcode, 84061)
        sent = c.external_contact.add_msg_template(
            {
                "chat_type": "single",
                "external_userid": ["wmExt000", "wmExt001", "wmExt002", "wmExt003", "wmGhost"],
                "sender": "zhangsan",
                "tag_filter": {"group_list": [{"tag_list": [gold]}]},
                "text": {"content": "金牌客户专享"},
            }
        )
        self.assertEqual(sent["fail_list"], ["wmGhost"])
        msgid = sent["msgid"]
        now = int(time.time())
        listed = c.post("externalcontact/get_groupmsg_list_v2", data={"chat_type": "single", "start_time": now - 3600, "end_time": now + 3600})
        self.assertIn(msgid, [m["msgid"] for m in listed["group_msg_list"]])
        for _ in range(100):
            task = c.post("externalcontact/get_groupmsg_task", data={"msgid": msgid})
            if task["task_list"][0]["status"] == 1:
                break
            time.sleep(0.1)
        self.assertEqual(task["task_list"][0]["userid"], "zhangsan")
        seen, cursor = [], None
        while True:
            body = {"msgid": msgid, "userid": "zhangsan", "limit": 1}
            if cursor:
                body["cursor"] = cursor
            page = c.post("externalcontact/get_groupmsg_send_result", data=body)
            seen += [x["external_userid"] for x in page["send_list"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        # The tag filter kept the three gold customers.
        self.assertEqual(sorted(seen), ["wmExt000", "wmExt001", "wmExt002"])


class OfficialAccount(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = QunfaOfficialAccount(APP_ID, APP_SECRET)

    def test_tags_and_followers(self):
        c = self.c
        tag = c.tag.create("星标用户")
        self.assertEqual(tag["name"], "星标用户")
        with self.assertRaises(WeChatClientException) as e:
            c.tag.create("星标用户")
        self.assertEqual(e.exception.errcode, 45157)
        c.tag.tag_user(tag["id"], [openid(1), openid(2), openid(3)])
        self.assertEqual(c.tag.get_user_tag(openid(2)), [tag["id"]])
        members = c.tag.get_tag_users(tag["id"])
        self.assertEqual(sorted(members["data"]["openid"]), [openid(1), openid(2), openid(3)])
        self.assertIn(tag["id"], [t["id"] for t in c.tag.get()])
        with self.assertRaises(WeChatClientException) as e:
            c.tag.tag_user(tag["id"], ["oNotAFollower"])
        self.assertEqual(e.exception.errcode, 40003)
        followers = c.user.get_followers()
        self.assertEqual((followers["total"], followers["count"], followers["next_openid"]), (12, 12, ""))
        self.assertEqual(len(list(c.user.iter_followers())), 12)
        self.assertEqual(c.user.get(openid(1))["nickname"], "粉丝1")

    def wait_status(self, msg_id, status):
        for _ in range(100):
            got = self.c.message.get_mass(msg_id)["msg_status"]
            if got == status:
                return
            time.sleep(0.1)
        self.fail("msg %s stayed %s" % (msg_id, got))

    def test_mass_send_and_callback(self):
        c = self.c
        tag = c.tag.create("活动")
        c.tag.tag_user(tag["id"], [openid(4), openid(5)])
        # By tag (wechatpy sends the legacy group_id), to everyone, to OpenIDs.
        by_tag = c.message.send_mass_text(tag["id"], "本周活动")
        self.assertEqual(by_tag["errmsg"], "send job submission success")
        everyone = c.message.send_mass_text(None, "全体粉丝", is_to_all=True)
        c.message.send_mass_text([openid(6), openid(7)], "指定粉丝")
        self.wait_status(everyone["msg_id"], "SEND_SUCCESS")
        # The callback of the send to everyone, decrypted by wechatpy's own crypto.
        crypto = WeChatCrypto(CB_TOKEN, CB_AES_KEY, APP_ID)
        events = {}
        deadline = time.time() + 20
        while everyone["msg_id"] not in events and time.time() < deadline:
            try:
                path, body = Receiver.received.get(timeout=1)
            except queue.Empty:
                continue
            q = dict(p.split("=", 1) for p in path.split("?", 1)[1].split("&"))
            self.assertEqual(q["encrypt_type"], "aes")
            xml = crypto.decrypt_message(body, q["msg_signature"], q["timestamp"], q["nonce"])
            event = parse_message(xml)
            self.assertIsInstance(event, MassSendJobFinishEvent)
            events[event.id] = event
        event = events[everyone["msg_id"]]
        self.assertEqual(event.event, "masssendjobfinish")
        self.assertEqual((event.total_count, event.filter_count, event.sent_count, event.error_count), (12, 12, 12, 0))
        self.assertEqual(event.status, "send success")

    def test_mass_send_to_many_openids(self):
        # 2 to 10,000 OpenIDs are one mass send (qunfa's /v1 picks at most 2,000).
        key = workspace("api", "兼容测试公众号二", plan="pro")
        secret = v1("PUT", "/v1/compat/oa", key, {"app_id": "wxqunfatest02"})["secret"]
        ids = ["oMany%023d" % i for i in range(2500)]
        lines = "".join('{"external_id": "%s", "name": "粉丝"}\n' % i for i in ids)
        r = requests.post(
            BASE + "/v1/contacts/import",
            headers={"Authorization": "Bearer " + key, "Content-Type": "application/x-ndjson"},
            data=lines.encode(),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        sent = QunfaOfficialAccount("wxqunfatest02", secret).message.send_mass_text(ids, "两千五百人")
        self.assertEqual(v1("GET", "/v1/broadcasts/%s" % sent["msg_id"], key)["recipients"], 2500)

    def test_mass_send_rules(self):
        c = self.c
        with self.assertRaises(WeChatClientException) as e:
            c.message.send_mass_text([openid(1)], "只有一个")
        self.assertEqual(e.exception.errcode, 40130)
        with self.assertRaises(WeChatClientException) as e:
            c.message.send_mass_text(987654321, "没有这个标签")
        self.assertEqual(e.exception.errcode, 45159)
        with self.assertRaises(WeChatClientException) as e:
            c.message.send_mass_text(None, BLOCKED, is_to_all=True)
        self.assertEqual(e.exception.errcode, 87014)
        # A refused send does not hold its clientmsgid: the retry is judged
        # again (87014), not answered "too fast" (45066) for a send never made.
        for _ in range(2):
            with self.assertRaises(WeChatClientException) as e:
                c.message.send_mass_text([openid(8), openid(9)], BLOCKED, client_msg_id="refused-1")
            self.assertEqual(e.exception.errcode, 87014)
        # clientmsgid: once; again at once is too fast; too long is refused.
        first = c.message.send_mass_text([openid(8), openid(9)], "一次", client_msg_id="order-42")
        with self.assertRaises(WeChatClientException) as e:
            c.message.send_mass_text([openid(8), openid(9)], "一次", client_msg_id="order-42")
        self.assertEqual(e.exception.errcode, 45066)
        with self.assertRaises(WeChatClientException) as e:
            c.message.send_mass_text([openid(8), openid(9)], "长", client_msg_id="x" * 65)
        self.assertEqual(e.exception.errcode, 45067)
        # Preview, status, delete.
        preview = c.message.send_mass_text(openid(10), "预览", preview=True)
        self.assertEqual(preview["errmsg"], "preview success")
        self.wait_status(first["msg_id"], "SEND_SUCCESS")
        c.message.delete_mass(first["msg_id"])
        self.assertEqual(c.message.get_mass(first["msg_id"])["msg_status"], "DELETE")
        # Speed levels 0 (fastest) to 4.
        c.post("message/mass/speed/set", data={"speed": 3})
        self.assertEqual(c.post("message/mass/speed/get", data={})["speed"], 3)
        with self.assertRaises(WeChatClientException) as e:
            c.post("message/mass/speed/set", data={"speed": 9})
        self.assertEqual(e.exception.errcode, 45083)
        c.post("message/mass/speed/set", data={"speed": 0})


if __name__ == "__main__":
    unittest.main(verbosity=2)
