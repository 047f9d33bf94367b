// Shared by the console (app.js) and the inbox page (inbox.js): the DOM
// builder, the language, times and errors. Every text the user or a contact
// wrote goes into the page as text (DOM nodes), never as HTML.
'use strict';

// Chinese first for a Chinese browser; the choice is kept per browser.
let lang = localStorage.getItem('qunfa.lang') ||
  ((navigator.languages || [navigator.language || 'zh']).some((l) => /^zh/i.test(l)) ? 'zh' : 'en');
function switchLang() {
  lang = lang === 'zh' ? 'en' : 'zh';
  localStorage.setItem('qunfa.lang', lang);
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
}
document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';

// A translator over a page's texts: TEXT[lang][key], else English, else the key.
function translator(texts) {
  return (key) => texts[lang][key] ?? texts.en[key] ?? key;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// Replaces an element's children (arrays flattened, null/false left out).
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false)
    .map((k) => (k instanceof Node ? k : String(k))));
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

const when = (s) => (s ? new Date(s).toLocaleString(lang === 'zh' ? 'zh-CN' : 'en-GB') : '');

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

// An error as the user sees it: the message in their language, the code, the hint.
function errorBox(e) {
  const b = e.body || {};
  const msg = (lang === 'zh' ? b.message_zh : b.message) || e.message;
  return h('div', { class: 'error', role: 'alert' },
    h('strong', {}, msg), b.code ? h('span', { class: 'muted' }, ` (${b.code})`) : null,
    b.hint ? h('div', { class: 'hint' }, b.hint) : null);
}
