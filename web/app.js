// The key-holder page: DOM wiring around relay-client.js and keystore.js.
// All text that comes from the relay or a backend is put in as DOM nodes by
// display.js, never parsed as HTML: its hidden and control characters (bidi
// overrides, CR/LF, zero-width characters...) are shown as visible tokens
// such as ⟨U+202E⟩ instead of being applied, and where it stands inside a
// sentence of the page it sits in a <bdi>, so right-to-left text cannot
// reorder the words around it.

import {
  RelayClient,
  checkSupport,
  exportPublicKey,
  formatByteCount,
  generateKeyPair,
  relayUrlFor,
  renderMessage,
} from "./relay-client.js";
import { forgetKey, keystoreAvailable, loadKey, loadOrStoreKey, replaceKey } from "./keystore.js";
import {
  countdownText,
  describeCancel,
  displayText,
  hiddenCharWarning,
  isolatedText,
  renderInto,
  requestLabel,
  requesterParts,
} from "./display.js";

const HISTORY_LIMIT = 20;
const NOTICE_LIMIT = 4;
const KEY_CHANNEL = "signrelay-key";

const $ = (id) => document.getElementById(id);

const UNSUPPORTED_TEXT = {
  "insecure-context":
    "Browsers give signing keys only to pages served over https (or from localhost). Open this page through an https address of the relay.",
  "no-webcrypto":
    "This browser has no Web Cryptography API, which the page needs to make and use a key.",
  "no-ed25519":
    "This browser's Web Cryptography API cannot make Ed25519 keys. Use a current version of Chrome or Edge (137 or later), Firefox (129 or later) or Safari (17 or later).",
  framed:
    "For your safety this page does not run inside a frame of another page. Open it in its own tab.",
  "key-failed": "The page could not create or load a key in this browser.",
};

/** Page state that outlives one connection. */
const app = {
  client: null,
  keyEntry: null, // {keyPair, createdAt}
  persistent: true, // false when IndexedDB cannot be used
  reconnectAt: null, // Date of the next scheduled reconnect
  channel: null,
  cardSeq: 0, // numbers the ids of card elements
};

/**
 * Appends page text and relay text to `el`: strings are the page's own words,
 * `{relay: text}` is text from the relay or a backend, rendered by display.js
 * into an isolated <bdi>.
 * @param {Element} el
 * @param {Array<string | {relay: string}>} parts
 * @returns {number} hidden characters found in the relay text
 */
function appendParts(el, parts) {
  let hidden = 0;
  for (const part of parts) {
    if (typeof part === "string") {
      el.append(part);
    } else {
      const { node, hiddenCount } = isolatedText(document, part.relay);
      el.append(node);
      hidden += hiddenCount;
    }
  }
  return hidden;
}

// ---------------------------------------------------------------------------
// Start-up.

main().catch((err) => {
  console.error(err);
  showUnsupported("key-failed", String(err && err.message ? err.message : err));
});

async function main() {
  $("loading").hidden = true;
  // A page that approves signatures must not be clickable through someone
  // else's frame (clickjacking).
  if (window.top !== window.self) return showUnsupported("framed");

  const support = await checkSupport();
  if (!support.ok) return showUnsupported(support.reason);

  $("key-panel").hidden = false;
  $("requests-panel").hidden = false;
  $("history-panel").hidden = false;
  wireControls();
  watchOtherTabs();
  setInterval(tick, 250);

  const entry = await loadOrCreateKey();
  useKey(entry);
}

function showUnsupported(reason, detail) {
  setConn("unsupported", "Not available");
  $("unsupported-text").textContent = [UNSUPPORTED_TEXT[reason] || reason, detail].filter(Boolean).join(" ");
  $("unsupported").hidden = false;
  for (const id of ["key-panel", "requests-panel", "history-panel"]) $(id).hidden = true;
}

async function loadOrCreateKey() {
  const fresh = await generateKeyPair();
  if (keystoreAvailable()) {
    try {
      return await loadOrStoreKey(fresh);
    } catch (err) {
      console.warn("key store unavailable, keeping the key in memory only", err);
    }
  }
  app.persistent = false;
  $("storage-warning").hidden = false;
  return { keyPair: fresh, createdAt: new Date() };
}

// ---------------------------------------------------------------------------
// Key panel.

async function useKey(entry) {
  stopClient();
  app.keyEntry = entry;
  $("key-absent").hidden = true;
  $("key-present").hidden = false;
  const publicKey = await exportPublicKey(entry.keyPair.publicKey);
  $("public-key").textContent = publicKey;
  $("key-created").textContent = entry.createdAt
    ? `Created ${entry.createdAt.toLocaleString()}.`
    : "";
  startClient(entry.keyPair);
}

function showNoKey() {
  stopClient();
  app.keyEntry = null;
  $("key-present").hidden = true;
  $("key-absent").hidden = false;
  $("public-key").textContent = "";
  setConn("nokey", "No key: not connected");
}

function wireControls() {
  $("copy-key").addEventListener("click", copyPublicKey);
  $("new-key").addEventListener("click", onNewKey);
  $("forget-key").addEventListener("click", onForgetKey);
  $("create-key").addEventListener("click", onCreateKey);
  $("reconnect-now").addEventListener("click", () => app.client && app.client.reconnectNow());
  // Coming back online, or to a tab whose timers the browser slowed down in
  // the background, is a better moment to retry than any timer.
  const retryEarly = () => {
    if (app.client && app.client.state === "reconnecting") app.client.reconnectNow();
  };
  window.addEventListener("online", retryEarly);
  document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && retryEarly());
}

async function copyPublicKey() {
  const text = $("public-key").textContent;
  const button = $("copy-key");
  try {
    await navigator.clipboard.writeText(text);
    flashButton(button, "Copied");
    announce("Public key copied.");
  } catch {
    // Clipboard refused (permissions): select the text so the person can copy it.
    const range = document.createRange();
    range.selectNodeContents($("public-key"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    flashButton(button, "Selected: press Ctrl+C");
  }
}

function flashButton(button, text) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = text;
  clearTimeout(button._flash);
  button._flash = setTimeout(() => (button.textContent = original), 2000);
}

async function onNewKey() {
  const ok = await confirmAction({
    title: "Replace this key?",
    text: "A new key pair is made and the current one is deleted from this browser for good. Backends that know the old public key can no longer get signatures from this page.",
    confirm: "Replace key",
  });
  if (!ok) return;
  const keyPair = await generateKeyPair();
  const entry = app.persistent ? await replaceKey(keyPair) : { keyPair, createdAt: new Date() };
  tellOtherTabs();
  await useKey(entry);
  announce("New key created.");
}

async function onForgetKey() {
  const ok = await confirmAction({
    title: "Forget this key?",
    text: "The key is deleted from this browser for good and this page stops receiving sign requests for it. This cannot be undone.",
    confirm: "Forget key",
  });
  if (!ok) return;
  if (app.persistent) await forgetKey();
  tellOtherTabs();
  showNoKey();
  $("create-key").focus();
  announce("Key forgotten.");
}

async function onCreateKey() {
  const keyPair = await generateKeyPair();
  const entry = app.persistent ? await loadOrStoreKey(keyPair) : { keyPair, createdAt: new Date() };
  tellOtherTabs();
  await useKey(entry);
  $("new-key").focus();
  announce("Key created.");
}

/** A modal confirmation; resolves true when the person confirms. */
function confirmAction({ title, text, confirm }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = confirm;
  const opener = document.activeElement;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (opener && opener.isConnected) opener.focus();
        resolve(dialog.returnValue === "ok");
      },
      { once: true },
    );
  });
}

// Tabs share the stored key; when one replaces or forgets it, the others
// follow instead of holding a key that no longer exists.
function watchOtherTabs() {
  if (typeof BroadcastChannel === "undefined") return;
  app.channel = new BroadcastChannel(KEY_CHANNEL);
  app.channel.addEventListener("message", async (ev) => {
    if (!ev.data || ev.data.type !== "key-changed" || !app.persistent) return;
    const entry = await loadKey();
    if (entry) await useKey(entry);
    else showNoKey();
  });
}

function tellOtherTabs() {
  if (app.channel) app.channel.postMessage({ type: "key-changed" });
}

// ---------------------------------------------------------------------------
// Connection.

function startClient(keyPair) {
  const client = new RelayClient({ url: relayUrlFor(window.location), keyPair });
  client.addEventListener("state", (ev) => onState(ev.detail));
  client.addEventListener("request", (ev) => addRequestCard(ev.detail));
  client.addEventListener("cancel", (ev) => onCancel(ev.detail));
  client.addEventListener("error", (ev) => onRelayError(ev.detail));
  app.client = client;
  client.connect();
}

function stopClient() {
  if (!app.client) return;
  const client = app.client;
  app.client = null;
  client.close();
  // Cards belong to the key that is going away.
  for (const card of document.querySelectorAll("#requests .card")) removeCard(card);
}

function onState(detail) {
  app.reconnectAt = null;
  switch (detail.state) {
    case "connecting":
      setConn("connecting", detail.attempt > 0 ? "Reconnecting…" : "Connecting…");
      break;
    case "connected":
      setConn("connected", "Connected");
      $("conn-text").title = `Session ${displayText(detail.sessionId)}`;
      announce("Connected to the relay.");
      break;
    case "reconnecting":
      app.reconnectAt = detail.at;
      setConn("reconnecting", reconnectText());
      if (detail.attempt === 1) announce("Connection to the relay lost. Reconnecting.");
      break;
    case "rejected":
      setConn("rejected", ["Rejected by the relay: ", { relay: detail.reason }]);
      announce(`The relay rejected this key: ${displayText(detail.reason)}`);
      break;
    case "closed":
      // Only when this page closed it on purpose (new or forgotten key).
      break;
  }
  $("reconnect-now").hidden = !(detail.state === "reconnecting" || detail.state === "rejected");
  $("reconnect-now").textContent = detail.state === "rejected" ? "Try again" : "Reconnect now";
}

function reconnectText() {
  const seconds = Math.max(0, Math.ceil((app.reconnectAt - Date.now()) / 1000));
  return seconds > 0 ? `Connection lost: reconnecting in ${seconds} s` : "Connection lost: reconnecting…";
}

/** @param {string | Array<string | {relay: string}>} text */
function setConn(state, text) {
  const conn = document.querySelector('[data-testid="conn-state"]');
  conn.dataset.state = state;
  $("conn-text").replaceChildren();
  appendParts($("conn-text"), Array.isArray(text) ? text : [text]);
  $("conn-text").title = "";
}

function onRelayError({ code, message, requestId }) {
  console.warn("relay error", code, message, requestId || "");
  if (code === "introduction_failed") return; // shown through the "rejected" state
  const card = requestId && findCard(requestId);
  if (card) {
    setCardStatus(card, ["The relay answered: ", { relay: message || code }], true);
  } else {
    addNotice(["The relay reported a problem (", { relay: code }, ")", ...(message ? [": ", { relay: message }] : []), "."], "error");
  }
}

// ---------------------------------------------------------------------------
// Request cards.

function findCard(requestId) {
  return document.querySelector(`#requests .card[data-request-id="${CSS.escape(requestId)}"]`);
}

function addRequestCard({ requestId, message, description, requester = "", expiresAt }) {
  if (findCard(requestId)) return;
  const card = $("request-template").content.firstElementChild.cloneNode(true);
  const rendered = renderMessage(message);
  const idBase = `req-${++app.cardSeq}`;
  card.dataset.requestId = requestId;
  card.requestInfo = {
    description,
    requester,
    label: requestLabel({ description, requester }),
    preview: preview(rendered),
    expiresAt,
  };

  // The description: relay text, hidden characters shown as tokens. The
  // heading has dir="auto" and is isolated, so a right-to-left description
  // reads right to left without moving anything else on the card.
  const heading = card.querySelector(".card-title");
  const hidden = { description: 0, requester: 0 };
  if (description) hidden.description = renderInto(heading, description);
  else heading.textContent = "No description";
  heading.id = `${idBase}-title`;
  heading.classList.toggle("card-title-empty", !description);
  card.querySelector("article").setAttribute("aria-labelledby", heading.id);

  // Who asks: the name of the relay's API key, relay text in a <bdi> inside
  // the page's sentence ("billing asks you to sign"). A key without a name
  // shows no line.
  const from = card.querySelector(".card-requester");
  const fromParts = requesterParts(requester);
  if (fromParts.length) {
    hidden.requester = appendParts(from, fromParts);
    from.id = `${idBase}-requester`;
    from.hidden = false;
  }

  const describedBy = fromParts.length ? [heading.id, from.id] : [heading.id];
  const warningText = hiddenCharWarning(hidden);
  if (warningText) {
    const warning = card.querySelector(".card-warning");
    warning.id = `${idBase}-warning`;
    warning.textContent = warningText;
    warning.hidden = false;
    describedBy.push(warning.id);
  }

  const pre = card.querySelector(".message");
  pre.textContent = rendered.text;
  pre.classList.toggle("message-hex", rendered.kind === "hex");
  pre.setAttribute("aria-label", `Message to sign, ${rendered.kind === "hex" ? "hex" : "text"}`);
  card.querySelector('[data-testid="message-info"]').textContent =
    `${rendered.kind === "hex" ? "hex (not printable text)" : "UTF-8 text"}, ${formatByteCount(rendered.byteLength)}`;
  appendParts(card.querySelector(".request-id"), ["Request ", { relay: requestId }]);

  // Asynchronous requests may have many minutes left: the countdown shows
  // minutes and seconds, and the deadline itself on hover.
  const countdown = card.querySelector(".countdown");
  countdown.dataset.expires = String(expiresAt.getTime());
  countdown.title = `Expires at ${expiresAt.toLocaleString()}`;
  updateCountdown(countdown);

  const approve = card.querySelector('[data-testid="approve"]');
  const reject = card.querySelector('[data-testid="reject"]');
  approve.setAttribute("aria-describedby", describedBy.join(" "));
  reject.setAttribute("aria-describedby", describedBy.join(" "));
  approve.addEventListener("click", () => answer(card, "approve"));
  reject.addEventListener("click", () => answer(card, "reject"));

  $("requests").append(card);
  updateRequestCount();
  const said = description ? displayText(description) : "No description";
  const who = requester ? ` from ${displayText(requester)}` : "";
  announce(`New sign request${who}: ${said}.${warningText ? ` ${warningText}` : ""}`);
}

function preview(rendered) {
  const text = rendered.text.length > 60 ? `${rendered.text.slice(0, 60)}…` : rendered.text;
  return rendered.kind === "hex" ? `hex ${text}` : `“${text}”`;
}

async function answer(card, action) {
  const client = app.client;
  const requestId = card.dataset.requestId;
  setCardBusy(card, true);
  setCardStatus(card, action === "approve" ? "Signing…" : "Rejecting…");
  try {
    if (action === "approve") await client.approve(requestId);
    else client.reject(requestId, "rejected by the key holder in the browser");
  } catch (err) {
    setCardBusy(card, false);
    setCardStatus(card, [`Could not ${action}: `, { relay: err.message }], true);
    return;
  }
  const outcome = action === "approve" ? "signed" : "rejected";
  addHistory(card.requestInfo, outcome);
  removeCard(card);
  announce(action === "approve" ? "Signed and sent." : "Rejected.");
}

function onCancel({ requestId, reason }) {
  const card = findCard(requestId);
  if (!card) return;
  // "cancelled": the backend took the request back (DELETE /sign/{id}),
  // told apart from a timeout, an answer elsewhere and a backend gone away.
  const why = describeCancel(reason);
  if (why.outcome) addHistory(card.requestInfo, why.outcome);
  addNotice([...card.requestInfo.label, " was removed: ", ...why.text, "."], why.kind, reason);
  removeCard(card);
}

function removeCard(card) {
  // Keep keyboard users in the list rather than dropping focus to <body>.
  // Focus goes to the next card itself, never to one of its buttons: a key
  // press meant for the card that went away must not approve another one.
  const hadFocus = card.contains(document.activeElement);
  const next = card.nextElementSibling || card.previousElementSibling;
  card.remove();
  updateRequestCount();
  if (!hadFocus) return;
  const target = next ? next.querySelector(".card-body") : $("requests-heading");
  target.focus();
}

function setCardBusy(card, busy) {
  for (const button of card.querySelectorAll("button")) button.disabled = busy;
}

/** @param {string | Array<string | {relay: string}>} text */
function setCardStatus(card, text, isError = false) {
  const status = card.querySelector(".card-status");
  status.replaceChildren();
  appendParts(status, Array.isArray(text) ? text : [text]);
  status.classList.toggle("card-status-error", isError);
}

function updateRequestCount() {
  const n = document.querySelectorAll("#requests .card").length;
  $("request-count").textContent = n ? `(${n})` : "";
  $("requests-empty").hidden = n > 0;
  // The tab title shows waiting requests when the tab is in the background.
  document.title = `${n ? `(${n}) ` : ""}signrelay · key holder`;
}

// ---------------------------------------------------------------------------
// Time-driven updates: countdowns and the reconnect delay.

function tick() {
  for (const el of document.querySelectorAll("#requests .countdown")) updateCountdown(el);
  if (app.reconnectAt) $("conn-text").textContent = reconnectText();
}

function updateCountdown(el) {
  const { text, soon } = countdownText(Number(el.dataset.expires) - Date.now());
  if (el.textContent !== text) el.textContent = text;
  el.classList.toggle("countdown-soon", soon);
}

// ---------------------------------------------------------------------------
// History, notices, announcements.

function addHistory(info, outcome) {
  const item = document.createElement("li");
  item.className = `history-item history-${outcome.replace(/\s+/g, "-")}`;
  item.dataset.testid = "history-item";
  item.dataset.outcome = outcome;

  const time = document.createElement("time");
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString();
  const badge = document.createElement("span");
  badge.className = "history-outcome";
  renderInto(badge, outcome); // an unknown cancel reason is the relay's text
  const title = document.createElement("span");
  title.className = "history-title";
  title.dir = "auto";
  if (info.description) renderInto(title, info.description);
  else title.textContent = "No description";
  const detail = document.createElement("span");
  detail.className = "history-preview muted";
  appendParts(detail, info.requester ? ["from ", { relay: info.requester }, ` \u00B7 ${info.preview}`] : [info.preview]);

  item.append(time, badge, title, detail);
  const list = $("history");
  list.prepend(item);
  while (list.children.length > HISTORY_LIMIT) list.lastElementChild.remove();
  $("history-empty").hidden = true;
}

/** @param {string | Array<string | {relay: string}>} text */
function addNotice(text, kind = "info", reason = "") {
  const notice = document.createElement("p");
  notice.className = `notice notice-${kind}`;
  notice.dataset.testid = "notice";
  if (reason) notice.dataset.reason = reason;
  const span = document.createElement("span");
  appendParts(span, Array.isArray(text) ? text : [text]);
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.className = "notice-dismiss";
  dismiss.setAttribute("aria-label", "Dismiss");
  dismiss.textContent = "×";
  dismiss.addEventListener("click", () => notice.remove());
  notice.append(span, dismiss);
  const box = $("notices");
  box.prepend(notice);
  while (box.children.length > NOTICE_LIMIT) box.lastElementChild.remove();
}

function announce(text) {
  const el = $("announcer");
  // Cleared first so that the same sentence twice is still spoken twice.
  el.textContent = "";
  // A timer rather than requestAnimationFrame, which stops in background tabs.
  setTimeout(() => (el.textContent = text), 50);
}
