// qunfa recipient inbox: the page a contact opens with its inbox link
// (/inbox#token=…). The token stays in this tab (sessionStorage) and is sent
// as a bearer token; it is removed from the address bar at once.
'use strict';

const TEXT = {
  zh: {
    title: '收件箱', empty: '暂无消息', from: '来自', read: '已读', unread: '未读', reply: '回复', send: '发送',
    forward: '转发', report: '举报', block: '屏蔽此发送者', unsubscribe: '退订群发',
    recalled: '此消息已被发送者撤回', no_token: '链接无效：缺少收件箱令牌。', replied: '已回复', forwarded: '已转发',
    reported: '已举报', blocked: '已屏蔽', unsubscribed: '已退订', language: 'English', reason: '举报原因',
    spam: '垃圾信息', fraud: '诈骗', harassment: '骚扰', illegal: '违法', other: '其他', back: '返回',
  },
  en: {
    title: 'Inbox', empty: 'No messages', from: 'From', read: 'read', unread: 'unread', reply: 'Reply', send: 'Send',
    forward: 'Forward', report: 'Report', block: 'Block this sender', unsubscribe: 'Unsubscribe',
    recalled: 'The sender recalled this message', no_token: 'This link is not valid: the inbox token is missing.',
    replied: 'Replied', forwarded: 'Forwarded', reported: 'Reported', blocked: 'Blocked', unsubscribed: 'Unsubscribed',
    language: '中文', reason: 'Reason', spam: 'Spam', fraud: 'Fraud', harassment: 'Harassment', illegal: 'Illegal',
    other: 'Other', back: 'Back',
  },
};
const t = translator(TEXT);

const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromHash) {
  sessionStorage.setItem('qunfa.inbox', fromHash);
  history.replaceState(null, '', location.pathname);
}
const token = sessionStorage.getItem('qunfa.inbox');

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) throw new ApiError(r.status, data?.error);
  return data;
}
function header() {
  fill(document.getElementById('top'), h('nav', {},
    h('span', { class: 'brand' }, t('title')), h('span', { class: 'spacer' }),
    h('button', { class: 'link', id: 'lang', onclick: () => { switchLang(); list(); } }, t('language'))));
}

function messageBody(m) {
  if (m.recalled) return h('p', { class: 'muted' }, t('recalled'));
  const c = m.content || {};
  return h('div', {},
    c.title ? h('p', {}, h('strong', {}, c.title)) : null,
    m.text ? h('p', { class: 'text' }, m.text) : null,
    c.url ? h('p', {}, h('a', { href: c.url, rel: 'noopener noreferrer' }, c.url)) : null,
    c.description ? h('p', {}, c.description) : null,
    c.media_id ? h('p', { class: 'muted' }, `[${c.type}]`) : null);
}

// The message on screen, and how long it was visible: opening it starts a
// view (the read receipt, the first time), leaving it (back, another tab,
// closing the page) ends the view with the visible time (reading time).
let viewing = null;
function visibleMs() {
  if (!viewing) return 0;
  return viewing.ms + (viewing.since === null ? 0 : performance.now() - viewing.since);
}
document.addEventListener('visibilitychange', () => {
  if (!viewing) return;
  if (document.visibilityState === 'hidden') {
    viewing.ms = visibleMs();
    viewing.since = null;
  } else if (viewing.since === null) {
    viewing.since = performance.now();
  }
});
function closeView() {
  if (!viewing) return;
  const body = JSON.stringify({ visible_ms: Math.round(visibleMs()) });
  const path = `/v1/inbox/${encodeURIComponent(viewing.id)}/close`;
  viewing = null;
  // keepalive: the request outlives a closing page.
  fetch(path, { method: 'POST', keepalive: true, body, headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' } })
    .catch(() => {});
}
window.addEventListener('pagehide', closeView);

async function open(id) {
  const box = document.getElementById('main');
  try {
    const m = await api('GET', `/v1/inbox/${encodeURIComponent(id)}`);
    if (!m.recalled) {
      await api('POST', `/v1/inbox/${encodeURIComponent(id)}/read`);
      viewing = { id, ms: 0, since: document.visibilityState === 'visible' ? performance.now() : null };
    }
    const status = h('p', { id: 'status', 'aria-live': 'polite' });
    const replyText = h('textarea', { id: 'reply-text', rows: 3, 'aria-label': t('reply') });
    const reason = h('select', { id: 'report-reason', 'aria-label': t('reason') },
      ['spam', 'fraud', 'harassment', 'illegal', 'other'].map((r) => h('option', { value: r }, t(r))));
    const act = async (fn, done) => {
      try { await fn(); fill(status, h('span', { class: 'ok' }, t(done))); } catch (e) { fill(status, errorBox(e)); }
    };
    const mid = encodeURIComponent(id);
    fill(box, 
      h('p', {}, h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); list(); } }, `← ${t('back')}`)),
      h('article', { class: 'card', id: 'message' },
        h('p', { class: 'muted' }, `${t('from')} ${m.from} · ${when(m.delivered_at)}`), messageBody(m)),
      m.recalled ? null : h('section', { class: 'card' },
        replyText,
        h('p', {}, h('button', { class: 'primary', id: 'reply', onclick: () => act(async () => {
          await api('POST', `/v1/inbox/${mid}/reply`, { text: replyText.value });
          replyText.value = '';
        }, 'replied') }, t('send'))),
        h('p', {},
          h('button', { id: 'forward', onclick: () => act(() => api('POST', `/v1/inbox/${mid}/forward`, { to: 'chat' }), 'forwarded') }, t('forward')),
          reason,
          h('button', { id: 'report', onclick: () => act(() => api('POST', `/v1/inbox/${mid}/report`, { reason: reason.value }), 'reported') }, t('report')),
          h('button', { id: 'block', class: 'danger', onclick: () => act(() => api('POST', `/v1/inbox/${mid}/block`), 'blocked') }, t('block')),
          h('button', { id: 'unsubscribe', onclick: () => act(() => api('POST', '/v1/inbox/unsubscribe', { channel: 'inbox' }), 'unsubscribed') }, t('unsubscribe'))),
        status));
  } catch (e) {
    fill(box, errorBox(e));
  }
}

async function list() {
  closeView();
  header();
  const box = document.getElementById('main');
  if (!token) { fill(box, h('p', { class: 'error' }, t('no_token'))); return; }
  try {
    const page = await api('GET', '/v1/inbox?limit=100');
    fill(box, h('h1', {}, t('title')), page.items.length
      ? h('div', { id: 'messages' }, page.items.map((m) => h('div', { class: `message ${m.read_at ? 'read' : 'unread'}` },
        h('p', { class: 'from' }, h('a', { href: '#', 'data-id': m.message_id, onclick: (ev) => { ev.preventDefault(); open(m.message_id); } },
          m.recalled ? t('recalled') : (m.text || m.content.title || m.content.type || '').slice(0, 60))),
        h('p', { class: 'muted' }, `${m.from} · ${when(m.delivered_at)} · `, h('span', { class: 'read-state' }, m.read_at ? t('read') : t('unread'))))))
      : h('p', { class: 'muted' }, t('empty')));
  } catch (e) {
    fill(box, errorBox(e));
  }
}
list();
