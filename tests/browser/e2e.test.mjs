// End-to-end tests of the browser key holder: headless Chromium (Debian's
// package, driven by playwright-core) against a real relay built and started
// by the test. All traffic stays on 127.0.0.1.
//
// Run: node --test tests/browser/e2e.test.mjs
// Environment:
//   CHROMIUM_PATH  browser to drive (default /usr/bin/chromium)
//   SIGNRELAY_BIN  use this relay binary instead of building one with `go build`
// Screenshots go to test-artifacts/ at the repository root.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const ARTIFACTS = path.join(REPO, "test-artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const API_KEY = "e2e-test-key-0123456789abcdef"; // a bare key: no name
// A named key (contract §B): its requests say "billing asks you to sign".
const BILLING_KEY = "e2e-billing-key-fedcba9876543210";
const BILLING = "billing";
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

const STEP_MS = 15_000; // any single wait on the page or the relay
const TEST_MS = 60_000; // any single test

const sel = (testid) => `[data-testid="${testid}"]`;

// ---------------------------------------------------------------------------
// The relay under test.

async function buildRelay(dir) {
  if (process.env.SIGNRELAY_BIN) return process.env.SIGNRELAY_BIN;
  const bin = path.join(dir, "signrelay");
  await promisify(execFile)("go", ["build", "-o", bin, "."], { cwd: REPO, timeout: 300_000 });
  return bin;
}

class Relay {
  constructor(bin, dir) {
    this.bin = bin;
    this.dir = dir;
    this.proc = null;
    this.log = "";
    this.addr = null;
  }

  get url() {
    return `http://${this.addr}`;
  }

  get port() {
    return this.addr.split(":").pop();
  }

  /** Starts the relay and resolves once it logs the address it listens on. */
  async start(listen = "127.0.0.1:0") {
    const config = path.join(this.dir, "config.yaml");
    await fs.writeFile(
      config,
      [
        `listen: ${listen}`,
        `api_keys: ["${API_KEY}", {name: ${BILLING}, key: "${BILLING_KEY}"}]`,
        "rate_limits: { enabled: false }",
        "shutdown_grace: 3s",
        "",
      ].join("\n"),
    );
    const proc = spawn(this.bin, ["-config", config], { stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    const exited = once(proc, "exit");
    this.exited = exited;
    proc.stdout.on("data", (d) => (this.log += d));
    const listening = new Promise((resolve) => {
      proc.stderr.on("data", (d) => {
        this.log += d;
        const m = /msg=listening addr=(\S+)/.exec(this.log.slice(this.log.lastIndexOf("msg=listening")));
        if (m) resolve(m[1]);
      });
    });
    const failed = exited.then(([code]) => {
      throw new Error(`relay exited with ${code} before listening:\n${this.log}`);
    });
    this.addr = await withTimeout(Promise.race([listening, failed]), "relay to listen", STEP_MS);
  }

  /** SIGTERM, as an operator or a service manager would stop it. */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGTERM");
    try {
      await withTimeout(this.exited, "relay to exit after SIGTERM", STEP_MS);
    } catch (err) {
      this.proc.kill("SIGKILL");
      throw err;
    }
  }
}

function withTimeout(promise, what, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// Backend side: POST /sign as a backend would call it.

/**
 * Starts a POST /sign; the promise resolves to {status, body, location} when
 * the call ends (at once for `wait: false`, with 202 and a Location).
 */
function postSign(relay, { publicKey, message, description = "", timeoutMs, apiKey = API_KEY, wait, waitForHolder }) {
  const body = { public_key: publicKey, message: Buffer.from(message).toString("base64"), description };
  if (timeoutMs !== undefined) body.timeout_ms = timeoutMs;
  if (wait !== undefined) body.wait = wait;
  if (waitForHolder !== undefined) body.wait_for_holder = waitForHolder;
  return fetch(`${relay.url}/sign`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(70_000),
  }).then(async (res) => ({ status: res.status, body: await res.json(), location: res.headers.get("location") }));
}

/** GET or DELETE of a request resource (contract §C), as the API key that made it. */
function signResource(relay, location, { method = "GET", apiKey = API_KEY, waitMs } = {}) {
  const query = waitMs === undefined ? "" : `?wait_ms=${waitMs}`;
  return fetch(`${relay.url}${location}${query}`, {
    method,
    headers: { authorization: `Bearer ${apiKey}` },
    signal: AbortSignal.timeout(70_000),
  }).then(async (res) => ({ status: res.status, body: await res.json() }));
}

async function verifyEd25519(publicKeyB64, message, signatureB64) {
  const key = await crypto.subtle.importKey("raw", Buffer.from(publicKeyB64, "base64"), { name: "Ed25519" }, false, [
    "verify",
  ]);
  return crypto.subtle.verify({ name: "Ed25519" }, key, Buffer.from(signatureB64, "base64"), message);
}

// ---------------------------------------------------------------------------
// Page helpers.

const pageErrors = [];
const consoleLines = new WeakMap(); // page -> recent console output, for failure reports

async function newPage(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const lines = [];
  consoleLines.set(page, lines);
  page.on("console", (m) => lines.push(`${m.type()}: ${m.text()}`) > 30 && lines.shift());
  page.on("pageerror", (err) => pageErrors.push(`${page.url()}: ${err.message}`));
  return page;
}

async function openPage(context, relay) {
  const page = await newPage(context);
  await page.goto(`${relay.url}/`);
  await waitConnected(page);
  return page;
}

/** Waits for the "connected" state; on failure says what the page showed instead. */
async function waitConnected(page, timeout = STEP_MS) {
  const conn = page.locator(sel("conn-state"));
  try {
    await page.locator(`${sel("conn-state")}[data-state="connected"]`).waitFor({ timeout });
  } catch (err) {
    const shown = await conn.evaluate((el) => `${el.dataset.state}: ${el.textContent.trim()}`).catch(() => "?");
    err.message += `\npage shows ${shown}\npage console:\n${(consoleLines.get(page) || []).join("\n")}`;
    throw err;
  }
}

async function shownPublicKey(page) {
  const text = (await page.locator(sel("public-key")).textContent()).trim();
  assert.equal(Buffer.from(text, "base64").length, 32, `shown public key ${text}`);
  return text;
}

function card(page, description) {
  return page.locator(sel("request-card"), { hasText: description });
}

function screenshot(page, name) {
  return page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

// ---------------------------------------------------------------------------

describe("browser key holder against a real relay", { timeout: 600_000 }, () => {
  let tmp;
  let relay;
  let browser;
  let context; // shared by most tests: same IndexedDB, so the same key
  let page;

  // The main tab, reopened if an earlier test failed before making it, so
  // one failure does not cascade into all the tests after it.
  async function mainPage() {
    if (!page || page.isClosed()) page = await openPage(context, relay);
    return page;
  }

  before(
    async () => {
      await fs.access(CHROMIUM).catch(() => {
        throw new Error(`no browser at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
      });
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), "signrelay-e2e-"));
      await fs.mkdir(ARTIFACTS, { recursive: true });
      relay = new Relay(await buildRelay(tmp), tmp);
      await relay.start();
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
      context = await browser.newContext({ viewport: { width: 1024, height: 900 } });
    },
    { timeout: 400_000 },
  );

  after(async () => {
    await browser?.close();
    await relay?.stop().catch(() => relay.proc?.kill("SIGKILL"));
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  });

  test("the page loads, shows a key and connects", { timeout: TEST_MS }, async () => {
    page = await openPage(context, relay);
    await shownPublicKey(page);
    assert.equal(await page.locator(sel("loading")).isVisible(), false);
    assert.match(await page.locator(sel("conn-state")).textContent(), /Connected/);
    await page.locator("#requests-empty").waitFor();
    await screenshot(page, "01-connected");
  });

  test("a POST /sign shows a card; Approve returns a signature that verifies", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const message = new TextEncoder().encode("transfer 25 EUR to account 42");
    const pending = postSign(relay, { publicKey, message, description: "Payment #1001" });

    const c = card(page, "Payment #1001");
    await c.waitFor();
    assert.equal(await c.locator(sel("request-message")).textContent(), "transfer 25 EUR to account 42");
    assert.match(await c.locator(sel("message-info")).textContent(), /UTF-8 text, 29 bytes/);
    assert.match(await c.locator(sel("countdown")).textContent(), /Expires in \d+ s|Expires in 1 min/);
    await screenshot(page, "02-request");

    await c.locator(sel("approve")).click();
    const { status, body } = await pending;
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.public_key, publicKey);
    assert.equal(body.message, Buffer.from(message).toString("base64"));
    assert.ok(await verifyEd25519(publicKey, message, body.signature), "signature verifies against the shown key");

    await c.waitFor({ state: "detached" });
    await page.locator(`${sel("history-item")}[data-outcome="signed"]`, { hasText: "Payment #1001" }).waitFor();
    await screenshot(page, "03-signed");
  });

  test("Reject (from the keyboard) makes POST /sign answer 403", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const pending = postSign(relay, {
      publicKey,
      message: new TextEncoder().encode("delete all backups"),
      description: "Suspicious request",
    });
    const c = card(page, "Suspicious request");
    await c.waitFor();
    await c.locator(sel("reject")).focus();
    await page.keyboard.press("Enter");

    const { status, body } = await pending;
    assert.equal(status, 403, JSON.stringify(body));
    assert.equal(body.error.code, "rejected");
    await c.waitFor({ state: "detached" });
    await page.locator(`${sel("history-item")}[data-outcome="rejected"]`, { hasText: "Suspicious request" }).waitFor();
  });

  test("several requests wait at once; binary messages are shown as hex", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const binary = new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0xff, 0x80]);
    const first = postSign(relay, {
      publicKey,
      message: new TextEncoder().encode("release v2.4.0\nchecksum ok ✓"),
      description: "Release signing",
    });
    const second = postSign(relay, { publicKey, message: binary, description: "Firmware blob" });

    const text = card(page, "Release signing");
    const hex = card(page, "Firmware blob");
    await text.waitFor();
    await hex.waitFor();
    assert.equal(await page.locator(sel("request-card")).count(), 2);
    assert.equal(await hex.locator(sel("request-message")).textContent(), "de ad be ef 00 01 ff 80");
    assert.match(await hex.locator(sel("message-info")).textContent(), /hex .*8 bytes/);
    assert.match(await text.locator(sel("message-info")).textContent(), /UTF-8 text, 30 bytes/);
    await screenshot(page, "04-two-requests");
    await page.setViewportSize({ width: 375, height: 812 });
    await screenshot(page, "05-phone");
    await page.setViewportSize({ width: 1024, height: 900 });

    // Approve from the keyboard: focus then lands on the remaining card, not
    // on one of its buttons, so a second key press cannot answer it by mistake.
    await hex.locator(sel("approve")).focus();
    await page.keyboard.press("Enter");
    await hex.waitFor({ state: "detached" });
    assert.equal(
      await page.evaluate(() => document.activeElement.closest('[data-testid="request-card"]')?.textContent.includes("Release signing") && document.activeElement.tagName),
      "ARTICLE",
    );
    await text.locator(sel("reject")).click();
    const [a, b] = await Promise.all([second, first]);
    assert.equal(a.status, 200, JSON.stringify(a.body));
    assert.ok(await verifyEd25519(publicKey, binary, a.body.signature));
    assert.equal(b.status, 403, JSON.stringify(b.body));
    await page.locator(sel("request-card")).first().waitFor({ state: "detached" });
  });

  test("a short timeout_ms removes the card with the timeout reason", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const pending = postSign(relay, {
      publicKey,
      message: new TextEncoder().encode("nobody answers this"),
      description: "Short-lived request",
      timeoutMs: 2500,
    });
    const c = card(page, "Short-lived request");
    await c.waitFor();
    await c.waitFor({ state: "detached" });
    const notice = page.locator(`${sel("notice")}[data-reason="timeout"]`, { hasText: "Short-lived request" });
    await notice.waitFor();
    assert.match(await notice.textContent(), /timed out/);
    await page.locator(`${sel("history-item")}[data-outcome="timed out"]`).first().waitFor();

    const { status, body } = await pending;
    assert.equal(status, 504, JSON.stringify(body));
    assert.equal(body.error.code, "timeout");
    await screenshot(page, "06-timed-out");
  });

  test("the key survives a reload", { timeout: TEST_MS }, async () => {
    const before = await shownPublicKey(await mainPage());
    await page.reload();
    await waitConnected(page);
    assert.equal(await shownPublicKey(page), before);
  });

  test("a request still waiting survives a reload of the page", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const message = new TextEncoder().encode("still here after reload");
    const pending = postSign(relay, { publicKey, message, description: "Across a reload" });
    const requestId = await card(page, "Across a reload").getAttribute("data-request-id");
    await page.reload();
    await waitConnected(page);
    // The relay redelivers it to the re-introduced key: same request, same card.
    const again = card(page, "Across a reload");
    assert.equal(await again.getAttribute("data-request-id"), requestId);
    await again.locator(sel("approve")).click();
    const { status, body } = await pending;
    assert.equal(status, 200, JSON.stringify(body));
    assert.ok(await verifyEd25519(publicKey, message, body.signature));
  });

  test("a backend that gives up removes the card with that reason", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const abort = new AbortController();
    const pending = fetch(`${relay.url}/sign`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ public_key: publicKey, message: Buffer.from("abandoned").toString("base64"), description: "Abandoned request" }),
      signal: abort.signal,
    });
    await card(page, "Abandoned request").waitFor();
    abort.abort();
    await assert.rejects(pending, { name: "AbortError" });
    await card(page, "Abandoned request").waitFor({ state: "detached" });
    const notice = page.locator(`${sel("notice")}[data-reason="requester_gone"]`, { hasText: "Abandoned request" });
    assert.match(await notice.textContent(), /requester went away/);
  });

  test("two tabs with the same key both show a request; answering in one removes it from the other", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const second = await openPage(context, relay);
    assert.equal(await shownPublicKey(second), publicKey, "tabs share the stored key");

    const message = new TextEncoder().encode("approve me once");
    const pending = postSign(relay, { publicKey, message, description: "Two-tab request" });
    await card(page, "Two-tab request").waitFor();
    await card(second, "Two-tab request").waitFor();

    await card(page, "Two-tab request").locator(sel("approve")).click();
    const { status, body } = await pending;
    assert.equal(status, 200, JSON.stringify(body));
    assert.ok(await verifyEd25519(publicKey, message, body.signature));

    await card(second, "Two-tab request").waitFor({ state: "detached" });
    const notice = second.locator(`${sel("notice")}[data-reason="answered_elsewhere"]`, { hasText: "Two-tab request" });
    await notice.waitFor();
    assert.match(await notice.textContent(), /another tab/);
    await screenshot(second, "07-answered-in-other-tab");
    await second.close();
  });

  test("after the relay restarts, the page reconnects by itself", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const port = relay.port;

    // A request still waiting when the relay shuts down ends for both sides.
    const pending = postSign(relay, {
      publicKey,
      message: new TextEncoder().encode("caught by the shutdown"),
      description: "Interrupted request",
    });
    await card(page, "Interrupted request").waitFor();
    await relay.stop();
    const { status, body } = await pending;
    assert.equal(status, 503, JSON.stringify(body));
    assert.equal(body.error.code, "unavailable");
    await card(page, "Interrupted request").waitFor({ state: "detached" });
    await page.locator(`${sel("notice")}[data-reason="shutdown"]`, { hasText: "Interrupted request" }).waitFor();

    await page.locator(`${sel("conn-state")}[data-state="reconnecting"]`).waitFor();
    assert.match(await page.locator(sel("conn-state")).textContent(), /reconnecting/i);
    await screenshot(page, "08-reconnecting");

    await relay.start(`127.0.0.1:${port}`);
    await waitConnected(page, 40_000);

    // The new relay process knows the page again: a request reaches it.
    const message = new TextEncoder().encode("after the restart");
    const again = postSign(relay, { publicKey, message, description: "After restart" });
    await card(page, "After restart").locator(sel("approve")).click();
    const res = await again;
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(await verifyEd25519(publicKey, message, res.body.signature));
    await screenshot(page, "09-reconnected");
  });

  test("new key and forget key ask for confirmation", { timeout: TEST_MS }, async () => {
    const own = await browser.newContext({ viewport: { width: 1024, height: 900 } });
    try {
      const p = await openPage(own, relay);
      const first = await shownPublicKey(p);

      await p.locator(sel("new-key")).click();
      const dialog = p.locator(sel("confirm-dialog"));
      await dialog.waitFor();
      await screenshot(p, "10-confirm-new-key");
      await p.locator(sel("confirm-cancel")).click();
      await dialog.waitFor({ state: "hidden" });
      assert.equal(await shownPublicKey(p), first, "cancel keeps the key");

      await p.locator(sel("new-key")).click();
      await p.locator(sel("confirm-ok")).click();
      await p.waitForFunction(
        ([s, old]) => document.querySelector(s).textContent.trim() !== old,
        [sel("public-key"), first],
      );
      await waitConnected(p);
      const second = await shownPublicKey(p);
      assert.notEqual(second, first);

      // The old key is gone from the relay's point of view too.
      const res = await postSign(relay, { publicKey: first, message: new TextEncoder().encode("x") });
      assert.equal(res.status, 404, JSON.stringify(res.body));

      await p.locator(sel("forget-key")).click();
      await p.locator(sel("confirm-ok")).click();
      await p.locator(sel("create-key")).waitFor();
      await p.locator(`${sel("conn-state")}[data-state="nokey"]`).waitFor();
      await screenshot(p, "11-no-key");
      await p.reload();
      await waitConnected(p);
      assert.notEqual(await shownPublicKey(p), second, "a forgotten key does not come back");
    } finally {
      await own.close();
    }
  });

  test("a browser without Ed25519 gets a clear message", { timeout: TEST_MS }, async () => {
    const own = await browser.newContext({ viewport: { width: 1024, height: 700 } });
    try {
      // Stands in for an older browser: Ed25519 key generation is refused.
      await own.addInitScript(() => {
        const generateKey = SubtleCrypto.prototype.generateKey;
        SubtleCrypto.prototype.generateKey = function (algorithm, ...rest) {
          const name = typeof algorithm === "string" ? algorithm : algorithm && algorithm.name;
          if (String(name).toLowerCase() === "ed25519") {
            return Promise.reject(new DOMException("Algorithm: Unrecognized name", "NotSupportedError"));
          }
          return generateKey.call(this, algorithm, ...rest);
        };
      });
      const p = await newPage(own);
      await p.goto(`${relay.url}/`);
      const banner = p.locator(sel("unsupported"));
      await banner.waitFor();
      assert.match(await banner.textContent(), /Ed25519/);
      assert.equal(await p.locator(sel("public-key")).isVisible(), false);
      await screenshot(p, "12-unsupported");
    } finally {
      await own.close();
    }
  });

  test("hidden and control characters of a description are shown as tokens, with a warning", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    // The finding: a right-to-left override makes "Pay \u202E01$ ot" read as
    // "Pay to $10"; a BEL and a CR/LF would be invisible or break the line.
    const description = "Pay \u202E01$ ot\u0007\r\nfrom payroll";
    const shownText = "Pay ⟨U+202E⟩01$ ot⟨U+0007⟩⟨U+000D⟩⟨U+000A⟩from payroll";
    const pending = postSign(relay, { publicKey, message: new TextEncoder().encode("pay 10 EUR"), description });

    const c = card(page, "from payroll");
    await c.waitFor();
    const heading = c.locator(sel("request-description"));
    assert.equal(await heading.textContent(), shownText);
    const tokens = heading.locator("span.ctrl");
    assert.deepEqual(await tokens.allTextContents(), ["⟨U+202E⟩", "⟨U+0007⟩", "⟨U+000D⟩", "⟨U+000A⟩"]);
    assert.match(await tokens.first().getAttribute("title"), /^U\+202E RIGHT-TO-LEFT OVERRIDE/);
    assert.match(await tokens.first().getAttribute("aria-label"), /U\+202E right-to-left override/);
    assert.match(await tokens.nth(1).getAttribute("title"), /^U\+0007 BELL/);

    const warning = c.locator(sel("hidden-chars-warning"));
    assert.ok(await warning.isVisible(), "the warning line is shown");
    assert.equal(
      await warning.textContent(),
      "This description contains 4 hidden or control characters, shown as ⟨U+…⟩.",
    );
    assert.match(await c.locator(sel("approve")).getAttribute("aria-describedby"), /-warning$/);

    const look = await heading.evaluate((h) => {
      const style = getComputedStyle(h);
      const spans = [...h.querySelectorAll(".ctrl")].map((s) => s.getBoundingClientRect());
      const token = getComputedStyle(h.querySelector(".ctrl"));
      return {
        raw: /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/.test(h.textContent),
        dir: h.getAttribute("dir"),
        bidi: style.unicodeBidi,
        direction: style.direction,
        oneLine: spans.every((r) => Math.abs(r.top - spans[0].top) < 2),
        leftToRight: spans.every((r, i) => i === 0 || r.left > spans[i - 1].left),
        tokenLooksDifferent: token.backgroundColor !== style.backgroundColor && token.fontFamily !== style.fontFamily,
      };
    });
    assert.deepEqual(look, {
      raw: false,
      dir: "auto",
      bidi: "isolate",
      direction: "ltr",
      oneLine: true, // CR/LF did not break the line
      leftToRight: true, // the override was not applied: the rest is not reversed
      tokenLooksDifferent: true,
    });
    await c.scrollIntoViewIfNeeded();
    await screenshot(page, "14-hidden-characters");
    await c.screenshot({ path: path.join(ARTIFACTS, "14-hidden-characters-card.png") });

    await c.locator(sel("reject")).click();
    const { status, body } = await pending;
    assert.equal(status, 403, JSON.stringify(body));
    await c.waitFor({ state: "detached" });
    const item = page.locator(`${sel("history-item")}[data-outcome="rejected"]`, { hasText: "from payroll" });
    assert.equal(await item.locator(".history-title").textContent(), shownText, "history shows the tokens too");
  });

  test("a requester name, relay messages and right-to-left descriptions get the same treatment", { timeout: TEST_MS }, async () => {
    const own = await browser.newContext({ viewport: { width: 1024, height: 900 } });
    try {
      // The relay only accepts API key names of letters, digits, "-", "_",
      // "." and space; this tab's WebSocket stands in for a hostile or
      // broken relay by replacing the requester of each sign_request on its
      // way from the relay, and sends an error frame for the request.
      let toPage;
      await own.routeWebSocket(/\/ws$/, (ws) => {
        const server = ws.connectToServer();
        toPage = ws;
        server.onMessage((data) => {
          const frame = JSON.parse(data);
          if (frame.type === "sign_request") frame.requester = "billing\u202Etxe.exe";
          ws.send(JSON.stringify(frame));
        });
      });
      const p = await openPage(own, relay);
      const publicKey = await shownPublicKey(p);
      const description = "העברה של 100 ₪ לחשבון 42";
      const pending = postSign(relay, { publicKey, message: new TextEncoder().encode("transfer"), description });

      const c = p.locator(sel("request-card"));
      await c.waitFor();
      const heading = c.locator(sel("request-description"));
      assert.equal(await heading.textContent(), description, "legit Hebrew is untouched");
      assert.equal(await heading.locator(".ctrl").count(), 0);
      assert.equal(await heading.evaluate((h) => getComputedStyle(h).direction), "rtl", "it reads right to left");

      const from = c.locator(sel("request-requester"));
      assert.ok(await from.isVisible());
      assert.equal(await from.textContent(), "billing⟨U+202E⟩txe.exe asks you to sign");
      assert.equal(await from.locator("bdi span.ctrl").count(), 1);
      assert.equal(
        await c.locator(sel("hidden-chars-warning")).textContent(),
        "The requester name contains 1 hidden or control character, shown as ⟨U+…⟩.",
      );

      // The card's own words stay in place around the right-to-left heading.
      const layout = await c.evaluate((card) => {
        const r = (q) => card.querySelector(q).getBoundingClientRect();
        return {
          approveBeforeReject: r('[data-testid="approve"]').left < r('[data-testid="reject"]').left,
          countdownRightOfTitle: r(".countdown").left >= r(".card-title").right - 1,
          pageLtr: getComputedStyle(card).direction === "ltr",
        };
      });
      assert.deepEqual(layout, { approveBeforeReject: true, countdownRightOfTitle: true, pageLtr: true });

      // Relay text in the card's status line is treated the same way.
      const requestId = await c.getAttribute("data-request-id");
      toPage.send(JSON.stringify({ type: "error", code: "x", message: "try \u202Elater\n", request_id: requestId }));
      const status = c.locator(".card-status");
      await status.filter({ hasText: "The relay answered" }).waitFor();
      assert.equal(await status.textContent(), "The relay answered: try ⟨U+202E⟩later⟨U+000A⟩");
      assert.equal(await status.locator("bdi .ctrl").count(), 2);
      await screenshot(p, "15-requester-rtl");

      await c.locator(sel("reject")).click();
      const res = await pending;
      assert.equal(res.status, 403, JSON.stringify(res.body));
    } finally {
      await own.close();
    }
  });

  test("a request of a named API key says who asks; a bare key's names nobody", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const message = new TextEncoder().encode("invoice 2026-117: 480 EUR");
    const named = postSign(relay, { publicKey, message, description: "Invoice 2026-117", apiKey: BILLING_KEY });
    const bare = postSign(relay, { publicKey, message: new TextEncoder().encode("bare"), description: "From a bare key" });

    const c = card(page, "Invoice 2026-117");
    await c.waitFor();
    const from = c.locator(sel("request-requester"));
    assert.ok(await from.isVisible(), "the requester line is shown");
    assert.equal(await from.textContent(), "billing asks you to sign");
    // The name is relay text: in its own <bdi>, through the safe rendering.
    assert.equal(await from.locator("bdi.relay-text").textContent(), BILLING);
    assert.equal(await c.locator(sel("hidden-chars-warning")).isVisible(), false);
    assert.match(await c.locator(sel("approve")).getAttribute("aria-describedby"), /-requester\b/);

    const b = card(page, "From a bare key");
    await b.waitFor();
    assert.equal(await b.locator(sel("request-requester")).isVisible(), false, "a bare key shows no name");
    assert.equal(await b.locator(sel("request-requester")).textContent(), "");
    await c.scrollIntoViewIfNeeded();
    await c.screenshot({ path: path.join(ARTIFACTS, "16-requester-card.png") });

    await c.locator(sel("approve")).click();
    const res = await named;
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(await verifyEd25519(publicKey, message, res.body.signature));
    const item = page.locator(`${sel("history-item")}[data-outcome="signed"]`, { hasText: "Invoice 2026-117" });
    assert.match(await item.locator(".history-preview").textContent(), /^from billing · /);

    await b.locator(sel("reject")).click();
    assert.equal((await bare).status, 403);
  });

  test("DELETE of an asynchronous request shows it cancelled by the requester", { timeout: TEST_MS }, async () => {
    const publicKey = await shownPublicKey(await mainPage());
    const made = await postSign(relay, {
      publicKey,
      message: new TextEncoder().encode("quarterly report Q3"),
      description: "Report to take back",
      apiKey: BILLING_KEY,
      wait: false,
      timeoutMs: 600_000, // ten minutes: only an asynchronous request may
    });
    assert.equal(made.status, 202, JSON.stringify(made.body));
    assert.equal(made.location, `/sign/${made.body.request_id}`);
    assert.equal(made.body.status, "pending");
    assert.equal(made.body.requester, BILLING);

    const c = card(page, "Report to take back");
    await c.waitFor();
    assert.equal(await c.getAttribute("data-request-id"), made.body.request_id);
    assert.equal(await c.locator(sel("request-requester")).textContent(), "billing asks you to sign");
    // A long deadline is shown in minutes and seconds.
    const countdown = c.locator(sel("countdown"));
    assert.match(await countdown.textContent(), /^Expires in (10 min 00|9 min [0-5]\d) s$/);
    assert.match(await countdown.getAttribute("title"), /^Expires at /);
    assert.equal(await countdown.evaluate((el) => el.classList.contains("countdown-soon")), false);
    await c.scrollIntoViewIfNeeded();
    await screenshot(page, "17-async-ten-minutes");

    const del = await signResource(relay, made.location, { method: "DELETE", apiKey: BILLING_KEY });
    assert.equal(del.status, 200, JSON.stringify(del.body));
    assert.equal(del.body.status, "cancelled");

    await c.waitFor({ state: "detached" });
    const notice = page.locator(`${sel("notice")}[data-reason="cancelled"]`, { hasText: "Report to take back" });
    await notice.waitFor();
    assert.equal(
      await notice.locator("span").first().textContent(),
      "“Report to take back” from billing was removed: it was cancelled by the requester.",
    );
    assert.doesNotMatch(await notice.textContent(), /timed out|another tab|went away/);
    await page.locator(`${sel("history-item")}[data-outcome="cancelled by the requester"]`, { hasText: "Report to take back" }).waitFor();
    await screenshot(page, "18-cancelled-by-requester");

    const got = await signResource(relay, made.location, { apiKey: BILLING_KEY });
    assert.equal(got.status, 200, JSON.stringify(got.body));
    assert.equal(got.body.status, "cancelled");
  });

  test("requests made with wait_for_holder before the page connects appear as soon as it does", { timeout: TEST_MS }, async () => {
    const own = await browser.newContext({ viewport: { width: 1024, height: 900 } });
    try {
      // Make this context's key, then go offline: no page holds it.
      const first = await openPage(own, relay);
      const publicKey = await shownPublicKey(first);
      await first.close();
      const message = new TextEncoder().encode("payout batch 88");
      // The key is offline once a request without wait_for_holder is 404.
      const deadline = Date.now() + STEP_MS;
      for (;;) {
        const probe = await postSign(relay, { publicKey, message: new TextEncoder().encode("probe"), wait: false });
        if (probe.status === 404) {
          assert.equal(probe.body.error.code, "not_connected");
          break;
        }
        assert.equal(probe.status, 202, JSON.stringify(probe.body));
        await signResource(relay, probe.location, { method: "DELETE" });
        assert.ok(Date.now() < deadline, "the closed page's connection did not go away");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }

      // One asynchronous request of a named key, one blocking request of a
      // bare key: both wait for the holder instead of 404.
      const made = await postSign(relay, {
        publicKey,
        message,
        description: "Waiting for you",
        apiKey: BILLING_KEY,
        wait: false,
        waitForHolder: true,
        timeoutMs: 600_000,
      });
      assert.equal(made.status, 202, JSON.stringify(made.body));
      assert.equal(made.body.status, "pending");
      const blockingMessage = new TextEncoder().encode("blocking, waiting too");
      const blocking = postSign(relay, {
        publicKey,
        message: blockingMessage,
        description: "Blocking and waiting",
        waitForHolder: true,
        timeoutMs: 30_000,
      });
      // Still waiting while nobody holds the key.
      const waiting = await signResource(relay, made.location, { apiKey: BILLING_KEY, waitMs: 300 });
      assert.equal(waiting.body.status, "pending", JSON.stringify(waiting.body));

      const p = await newPage(own);
      await p.goto(`${relay.url}/`);
      await waitConnected(p);
      const c = card(p, "Waiting for you");
      await c.waitFor();
      await card(p, "Blocking and waiting").waitFor();
      assert.equal(await c.getAttribute("data-request-id"), made.body.request_id);
      assert.equal(await c.locator(sel("request-requester")).textContent(), "billing asks you to sign");
      assert.equal(await c.locator(sel("request-message")).textContent(), "payout batch 88");
      assert.match(await c.locator(sel("countdown")).textContent(), /^Expires in (10 min 00|9 min [0-5]\d) s$/);
      assert.equal(await p.locator(sel("request-card")).count(), 2);
      await screenshot(p, "19-waiting-for-holder");

      await c.locator(sel("approve")).click();
      const done = await signResource(relay, made.location, { apiKey: BILLING_KEY, waitMs: 10_000 });
      assert.equal(done.status, 200, JSON.stringify(done.body));
      assert.equal(done.body.status, "signed", JSON.stringify(done.body));
      assert.equal(done.body.requester, BILLING);
      assert.ok(await verifyEd25519(publicKey, message, done.body.signature), "the backend's signature verifies");
      await c.waitFor({ state: "detached" });

      await card(p, "Blocking and waiting").locator(sel("approve")).click();
      const res = await blocking;
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.ok(await verifyEd25519(publicKey, blockingMessage, res.body.signature));
    } finally {
      await own.close();
    }
  });

  test("a key the relay refuses shows 'rejected' and why", { timeout: TEST_MS }, async () => {
    const own = await browser.newContext({ viewport: { width: 1024, height: 700 } });
    try {
      // Stands in for a broken key holder: introduction signatures are
      // corrupted, so the relay must refuse the key (error + close 4401).
      await own.addInitScript(() => {
        const sign = SubtleCrypto.prototype.sign;
        const prefix = "signing-relay/";
        SubtleCrypto.prototype.sign = async function (algorithm, key, data) {
          const signature = new Uint8Array(await sign.call(this, algorithm, key, data));
          const bytes = ArrayBuffer.isView(data)
            ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
            : new Uint8Array(data);
          if (new TextDecoder().decode(bytes.subarray(0, prefix.length)) === prefix) signature[0] ^= 0xff;
          return signature.buffer;
        };
      });
      const p = await newPage(own);
      await p.goto(`${relay.url}/`);
      const conn = p.locator(`${sel("conn-state")}[data-state="rejected"]`);
      await conn.waitFor();
      assert.match(await conn.textContent(), /Rejected by the relay: \S/);
      await p.locator(sel("reconnect-now")).waitFor();
      assert.equal(await p.locator(sel("reconnect-now")).textContent(), "Try again");
      await screenshot(p, "13-rejected");
    } finally {
      await own.close();
    }
  });
});
