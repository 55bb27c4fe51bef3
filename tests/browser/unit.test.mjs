// Unit tests of web/relay-client.js: its pure helpers, its key helpers on
// Node's WebCrypto, and the client against a small in-process fake relay;
// and of web/display.js, which shows relay text with its hidden characters
// made visible.
// Run: node --test tests/browser/unit.test.mjs

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import nodeCrypto from "node:crypto";
import { WebSocket, WebSocketServer } from "ws";

import {
  CANCEL_DISCONNECTED,
  INTRODUCTION_CONTEXT,
  ProtocolError,
  RELAY_CANCEL_REASONS,
  RelayClient,
  backoffDelay,
  checkSupport,
  decodeBase64,
  encodeBase64,
  exportPublicKey,
  formatByteCount,
  generateKeyPair,
  introductionMessage,
  parseFrame,
  parseRfc3339,
  relayUrlFor,
  renderMessage,
  signBytes,
  verifySignature,
} from "../../web/relay-client.js";
import {
  COUNTDOWN_SOON_MS,
  codePointLabel,
  countdownText,
  describeCancel,
  displayText,
  formatDuration,
  hiddenCharName,
  hiddenCharWarning,
  isHiddenChar,
  renderInto,
  requestLabel,
  requesterParts,
  splitHidden,
} from "../../web/display.js";

const bytes = (...values) => new Uint8Array(values);
const utf8 = (text) => new TextEncoder().encode(text);

/** Verifies with node:crypto rather than the module, so the module does not grade itself. */
function nodeVerify(publicKeyB64, message, signature) {
  const spkiPrefix = Buffer.from("302a300506032b6570032100", "hex");
  const key = nodeCrypto.createPublicKey({
    key: Buffer.concat([spkiPrefix, Buffer.from(publicKeyB64, "base64")]),
    format: "der",
    type: "spki",
  });
  return nodeCrypto.verify(null, Buffer.from(message), key, Buffer.from(signature));
}

describe("base64", () => {
  test("round-trips every length around a block", () => {
    for (let n = 0; n < 10; n++) {
      const data = Uint8Array.from({ length: n }, (_, i) => (i * 37 + 200) & 0xff);
      const text = encodeBase64(data);
      assert.equal(text, Buffer.from(data).toString("base64"));
      assert.deepEqual(decodeBase64(text), data);
    }
  });

  test("encodes large inputs and ArrayBuffers", () => {
    const big = nodeCrypto.randomBytes(200_000);
    assert.equal(encodeBase64(new Uint8Array(big)), big.toString("base64"));
    assert.equal(encodeBase64(bytes(1, 2, 3).buffer), "AQID");
  });

  test("accepts only standard padded canonical base64", () => {
    for (const bad of ["YQ", "YQ=", "YW J j", "YWJj\n", "-_8=", "YR==", "YWJ=", "=", "Y===", "YWJjZA", null, 42]) {
      assert.throws(() => decodeBase64(bad), TypeError, `should refuse ${JSON.stringify(bad)}`);
    }
    assert.deepEqual(decodeBase64(""), bytes());
    assert.deepEqual(decodeBase64("+/8="), bytes(0xfb, 0xff));
  });
});

describe("introductionMessage", () => {
  test("is the ASCII context followed by the raw nonce", () => {
    const nonce = Uint8Array.from({ length: 32 }, (_, i) => i);
    const msg = introductionMessage(nonce);
    assert.equal(INTRODUCTION_CONTEXT, "signing-relay/v1/introduction:");
    assert.equal(msg.length, 30 + 32);
    assert.equal(Buffer.from(msg.subarray(0, 30)).toString("ascii"), INTRODUCTION_CONTEXT);
    assert.deepEqual(msg.subarray(30), nonce);
  });

  test("refuses nonces that are not 32 bytes", () => {
    assert.throws(() => introductionMessage(new Uint8Array(31)), TypeError);
    assert.throws(() => introductionMessage(new Uint8Array(33)), TypeError);
    assert.throws(() => introductionMessage("x".repeat(32)), TypeError);
  });
});

describe("renderMessage", () => {
  test("shows printable UTF-8 as text with its byte count", () => {
    assert.deepEqual(renderMessage(utf8("deploy v1.2 to prod")), {
      kind: "text",
      text: "deploy v1.2 to prod",
      byteLength: 19,
    });
    const r = renderMessage(utf8("héllo ✓\n\tnext line"));
    assert.equal(r.kind, "text");
    assert.equal(r.byteLength, 21, "bytes, not characters");
    assert.equal(renderMessage(utf8("family: 👩‍👩‍👧")).kind, "text", "emoji joiners are fine");
  });

  test("shows invalid UTF-8 as hex", () => {
    assert.deepEqual(renderMessage(bytes(0xde, 0xad, 0xbe, 0xef)), {
      kind: "hex",
      text: "de ad be ef",
      byteLength: 4,
    });
    assert.equal(renderMessage(bytes(0x61, 0xc3)).kind, "hex", "truncated sequence");
  });

  test("shows text with hidden characters as hex", () => {
    assert.equal(renderMessage(utf8("a\u0000b")).kind, "hex", "NUL");
    assert.equal(renderMessage(utf8("pay \u202Eevil")).kind, "hex", "bidi override");
    assert.equal(renderMessage(utf8("\u200Bzero width")).kind, "hex", "zero-width space");
    assert.equal(renderMessage(utf8("\uFEFFbom")).kind, "hex", "a leading BOM is not dropped silently");
    assert.equal(renderMessage(utf8("esc\u001b[31m")).kind, "hex", "terminal escape");
    assert.equal(renderMessage(utf8("c1 \u0085")).kind, "hex", "C1 control");
  });

  test("formats byte counts", () => {
    assert.equal(formatByteCount(1), "1 byte");
    assert.equal(formatByteCount(0), "0 bytes");
    assert.equal(formatByteCount(65536), "65,536 bytes");
  });
});

describe("display of relay text (display.js)", () => {
  const token = (cp) => `\u27E8${codePointLabel(cp)}\u27E9`;
  const shown = (text) => displayText(text);
  const count = (text) => splitHidden(text).hiddenCount;

  test("labels code points as U+XXXX with at least four digits", () => {
    assert.equal(codePointLabel(0x7), "U+0007");
    assert.equal(codePointLabel(0x202e), "U+202E");
    assert.equal(codePointLabel(0xe0041), "U+E0041");
    assert.equal(token(0x202e), "⟨U+202E⟩");
  });

  test("shows the right-to-left override of the finding as a token, not applied", () => {
    const text = "Pay \u202E01$ ot";
    assert.equal(shown(text), "Pay ⟨U+202E⟩01$ ot");
    assert.equal(count(text), 1);
    assert.deepEqual(splitHidden(text).segments, [
      { text: "Pay " },
      { codePoint: 0x202e, label: "U+202E", name: "RIGHT-TO-LEFT OVERRIDE", token: "⟨U+202E⟩" },
      { text: "01$ ot" },
    ]);
    assert.ok(!shown(text).includes("\u202E"), "the control itself is gone");
  });

  test("marks every bidi control", () => {
    const bidi = [0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0x200e, 0x200f, 0x061c];
    for (const cp of bidi) {
      const ch = String.fromCodePoint(cp);
      assert.equal(shown(`a${ch}b`), `a${token(cp)}b`, codePointLabel(cp));
      assert.notEqual(hiddenCharName(cp), "INVISIBLE OR FORMAT CHARACTER", `${codePointLabel(cp)} has its own name`);
    }
    assert.equal(count(bidi.map((cp) => String.fromCodePoint(cp)).join("")), bidi.length);
  });

  test("marks C0 and C1 controls and DEL, including tab, CR and LF", () => {
    for (let cp = 0; cp < 0x20; cp++) {
      assert.equal(shown(`x${String.fromCodePoint(cp)}y`), `x${token(cp)}y`, codePointLabel(cp));
    }
    for (let cp = 0x7f; cp <= 0x9f; cp++) {
      assert.equal(shown(`x${String.fromCodePoint(cp)}y`), `x${token(cp)}y`, codePointLabel(cp));
    }
    assert.equal(shown("ring\u0007 line1\r\nline2\tend"), "ring⟨U+0007⟩ line1⟨U+000D⟩⟨U+000A⟩line2⟨U+0009⟩end");
    assert.equal(hiddenCharName(0x07), "BELL");
    assert.equal(hiddenCharName(0x0d), "CARRIAGE RETURN");
    assert.equal(hiddenCharName(0x0a), "LINE FEED");
    assert.equal(hiddenCharName(0x7f), "DELETE");
    assert.equal(hiddenCharName(0x90), "C1 CONTROL CHARACTER");
  });

  test("marks invisible and format characters", () => {
    const invisible = [
      0x00ad, // soft hyphen
      0x200b, // zero width space
      0x200c, // ZWNJ
      0x200d, // ZWJ (outside an emoji sequence)
      0x2060, // word joiner
      0x2061,
      0x2064,
      0xfeff, // BOM
      0x2028, // line separator
      0x2029, // paragraph separator
      0x180e, // Mongolian vowel separator
      0x034f, // combining grapheme joiner
      0x3164, // Hangul filler
      0x115f,
      0xffa0,
      0xfff9, // interlinear annotation anchor
      0xe0001, // language tag
      0xe0041, // TAG LATIN CAPITAL LETTER A
      0xe007f, // cancel tag
    ];
    for (const cp of invisible) {
      assert.ok(isHiddenChar(String.fromCodePoint(cp)), codePointLabel(cp));
      assert.equal(shown(`p${String.fromCodePoint(cp)}ay`), `p${token(cp)}ay`, codePointLabel(cp));
    }
    assert.equal(hiddenCharName(0xe0041), "TAG A");
    assert.equal(hiddenCharName(0x200b), "ZERO WIDTH SPACE");
    // Every tag character, including a hidden "ASCII" message in tags.
    const smuggled = "ok" + Array.from("IGNORE", (c) => String.fromCodePoint(0xe0000 + c.charCodeAt(0))).join("");
    assert.equal(shown(smuggled), "ok⟨U+E0049⟩⟨U+E0047⟩⟨U+E004E⟩⟨U+E004F⟩⟨U+E0052⟩⟨U+E0045⟩");
    assert.equal(count(smuggled), 6);
  });

  test("leaves variation selectors and visible spaces alone", () => {
    for (const text of ["❤\uFE0F", "✓\uFE0E", "葛\u{E0100}", "a\u00A0b", "em\u2003space", "ideographic\u3000space"]) {
      assert.equal(shown(text), text, JSON.stringify(text));
      assert.equal(count(text), 0);
    }
  });

  test("keeps a zero-width joiner inside an emoji sequence only", () => {
    for (const emoji of ["👩\u200D👩\u200D👧", "❤\uFE0F\u200D🔥", "🧑🏽\u200D💻", "🏳\uFE0F\u200D🌈"]) {
      assert.equal(shown(`team ${emoji}`), `team ${emoji}`, JSON.stringify(emoji));
    }
    assert.equal(shown("pa\u200Dy"), "pa⟨U+200D⟩y", "between letters");
    assert.equal(shown("👩\u200D"), "👩⟨U+200D⟩", "trailing");
    assert.equal(shown("\u200D👩"), "⟨U+200D⟩👩", "leading");
    assert.equal(shown("👩\u200Da"), "👩⟨U+200D⟩a", "emoji then letter");
  });

  test("keeps surrogate pairs and astral characters whole; marks lone surrogates", () => {
    const astral = "😀 𝒳𝔂 𠜎 🇩🇪 \u{1F600}";
    assert.equal(shown(astral), astral);
    assert.equal(count(astral), 0);
    assert.deepEqual(splitHidden(astral).segments, [{ text: astral }]);
    // A hidden character between two astral ones splits nothing else.
    assert.equal(shown("😀\u202E😀"), "😀⟨U+202E⟩😀");
    assert.equal(shown("\u{1D4B3}\u200B\u{1D4B3}"), "\u{1D4B3}⟨U+200B⟩\u{1D4B3}");
    // Lone halves of a pair cannot be shown; they are marked, not dropped.
    assert.equal(shown("a\uD83Db"), "a⟨U+D83D⟩b");
    assert.equal(shown("a\uDE00"), "a⟨U+DE00⟩");
    assert.equal(hiddenCharName(0xd83d), "UNPAIRED SURROGATE");
  });

  test("leaves ordinary text untouched, including Arabic and Hebrew", () => {
    for (const text of [
      "Payment #1001 — 25,00 € to ACME GmbH",
      "héllo wörld ñ ç ß œ",
      "Überweisung: 10 € an Zoë",
      "שלום עולם: העברה של 100 ₪",
      "مرحبا بالعالم، دفع ١٠٠ دينار",
      "Invoice 42 · فاتورة ٤٢ · חשבונית 42",
      "日本語のテキスト、中文，한국어",
      "Ελληνικά и кириллица",
      "naïve café ① ② ③ ™ © ®",
      "",
    ]) {
      assert.equal(shown(text), text, text);
      assert.equal(count(text), 0, text);
    }
    assert.deepEqual(splitHidden("").segments, []);
  });

  test("counts every hidden character, repeats included", () => {
    assert.equal(count("\u202E\u202E\u202E"), 3);
    assert.equal(count("Pay \u202E01$ ot\u0007\r\n"), 4);
    assert.equal(count("a\u200Bb\u200Bc\uFEFF"), 3);
  });

  test("accepts non-strings without throwing", () => {
    assert.equal(shown(undefined), "");
    assert.equal(shown(null), "");
    assert.equal(shown(42), "42");
  });

  test("words the card's warning", () => {
    assert.equal(hiddenCharWarning({}), "");
    assert.equal(hiddenCharWarning({ description: 0 }), "");
    assert.equal(
      hiddenCharWarning({ description: 2 }),
      "This description contains 2 hidden or control characters, shown as ⟨U+…⟩.",
    );
    assert.equal(
      hiddenCharWarning({ description: 1 }),
      "This description contains 1 hidden or control character, shown as ⟨U+…⟩.",
    );
    assert.equal(
      hiddenCharWarning({ requester: 1 }),
      "The requester name contains 1 hidden or control character, shown as ⟨U+…⟩.",
    );
    assert.equal(
      hiddenCharWarning({ description: 3, requester: 1 }),
      "This description contains 3 hidden or control characters and the requester name 1, shown as ⟨U+…⟩.",
    );
  });

  test("renderInto builds text nodes and marked spans, never HTML", () => {
    // A minimal stand-in for the DOM calls renderInto makes.
    class Node {
      constructor(doc) {
        this.ownerDocument = doc;
        this.childNodes = [];
        this.attributes = {};
        this.dataset = {};
      }
      replaceChildren(...nodes) {
        this.childNodes = nodes;
      }
      setAttribute(name, value) {
        this.attributes[name] = String(value);
      }
      get textContent() {
        return this.text ?? this.childNodes.map((n) => n.textContent).join("");
      }
      set textContent(value) {
        this.text = value;
      }
    }
    const doc = {
      createTextNode: (text) => Object.assign(new Node(doc), { nodeType: 3, text }),
      createElement: (tag) => Object.assign(new Node(doc), { nodeType: 1, tagName: tag.toUpperCase() }),
    };
    const el = doc.createElement("h3");
    const hidden = renderInto(el, "<b>Pay</b> \u202E01$ ot\u0007");
    assert.equal(hidden, 2);
    assert.equal(el.textContent, "<b>Pay</b> ⟨U+202E⟩01$ ot⟨U+0007⟩", "markup stays text");
    const spans = el.childNodes.filter((n) => n.nodeType === 1);
    assert.deepEqual(
      spans.map((s) => [s.tagName, s.className, s.dir, s.textContent, s.dataset.codePoint]),
      [
        ["SPAN", "ctrl", "ltr", "⟨U+202E⟩", "U+202E"],
        ["SPAN", "ctrl", "ltr", "⟨U+0007⟩", "U+0007"],
      ],
    );
    assert.match(spans[0].title, /^U\+202E RIGHT-TO-LEFT OVERRIDE/);
    assert.equal(spans[0].attributes.role, "img");
    assert.match(spans[0].attributes["aria-label"], /U\+202E right-to-left override/);
    assert.equal(spans[1].attributes["aria-label"], "hidden character U+0007 bell");
    for (const n of el.childNodes) {
      assert.ok(!/[\u0007\u202E]/.test(n.textContent), "no hidden character reaches the DOM");
    }
  });
});

describe("the card's words (display.js)", () => {
  test("says who asks, through relay text; a bare key names nobody", () => {
    assert.deepEqual(requesterParts("billing"), [{ relay: "billing" }, " asks you to sign"]);
    // The name is relay text: it stays a {relay} part for the safe rendering.
    assert.deepEqual(requesterParts("billing\u202Etxe.exe"), [{ relay: "billing\u202Etxe.exe" }, " asks you to sign"]);
    assert.deepEqual(requesterParts(""), []);
    assert.deepEqual(requesterParts(undefined), []);
    assert.deepEqual(requesterParts({ name: "x" }), []);
  });

  test("labels a request by its description and requester", () => {
    assert.deepEqual(requestLabel({ description: "Payment #1", requester: "" }), ["\u201C", { relay: "Payment #1" }, "\u201D"]);
    assert.deepEqual(requestLabel({ description: "Payment #1", requester: "billing" }), [
      "\u201C",
      { relay: "Payment #1" },
      "\u201D",
      " from ",
      { relay: "billing" },
    ]);
    assert.deepEqual(requestLabel({ description: "", requester: "billing" }), [
      "A request with no description",
      " from ",
      { relay: "billing" },
    ]);
    assert.deepEqual(requestLabel({}), ["A request with no description"]);
  });

  test("formats time left in seconds, minutes and seconds, or hours and minutes", () => {
    const cases = [
      [1, "1 s"],
      [999, "1 s"],
      [1000, "1 s"],
      [1001, "2 s"],
      [42_000, "42 s"],
      [59_001, "1 min 00 s"],
      [60_000, "1 min 00 s"],
      [61_000, "1 min 01 s"],
      [65_500, "1 min 06 s"],
      [599_001, "10 min 00 s"], // a ten-minute asynchronous request, just made
      [600_000, "10 min 00 s"],
      [545_000, "9 min 05 s"],
      [3_599_000, "59 min 59 s"],
      [3_600_000, "1 h 00 min"],
      [3_900_000, "1 h 05 min"],
      [86_400_000, "24 h 00 min"],
      [0, "0 s"],
      [-5000, "0 s"],
      [NaN, "0 s"],
    ];
    for (const [ms, want] of cases) assert.equal(formatDuration(ms), want, `formatDuration(${ms})`);
  });

  test("words the countdown and says when it is urgent", () => {
    assert.deepEqual(countdownText(600_000), { text: "Expires in 10 min 00 s", soon: false });
    assert.deepEqual(countdownText(30_000), { text: "Expires in 30 s", soon: false });
    assert.deepEqual(countdownText(COUNTDOWN_SOON_MS), { text: "Expires in 10 s", soon: false });
    assert.deepEqual(countdownText(COUNTDOWN_SOON_MS - 1), { text: "Expires in 10 s", soon: true });
    assert.deepEqual(countdownText(0), { text: "Expiring\u2026", soon: true });
    assert.deepEqual(countdownText(-1), { text: "Expiring\u2026", soon: true });
    assert.deepEqual(countdownText(NaN), { text: "Expiring\u2026", soon: true });
  });

  test("tells every cancel reason apart; cancelled is the requester's doing", () => {
    const outcomes = new Set();
    for (const reason of RELAY_CANCEL_REASONS) {
      const why = describeCancel(reason);
      assert.equal(why.text.length, 1, reason);
      assert.equal(typeof why.text[0], "string", `${reason} is the page's own words`);
      assert.ok(why.outcome, `${reason} is an outcome for the history`);
      assert.equal(why.kind, "info");
      outcomes.add(why.outcome);
    }
    assert.equal(outcomes.size, RELAY_CANCEL_REASONS.length, "each reason has its own outcome");
    assert.deepEqual(describeCancel("cancelled"), {
      text: ["it was cancelled by the requester"],
      outcome: "cancelled by the requester",
      kind: "info",
    });
    assert.deepEqual(describeCancel("requester_gone").text, ["the requester went away"]);
    assert.deepEqual(describeCancel("timeout").text, ["it timed out"]);
    assert.deepEqual(describeCancel("answered_elsewhere").text, ["it was answered in another tab or device"]);
    // Not an outcome: the relay redelivers the request on reconnect.
    const lost = describeCancel(CANCEL_DISCONNECTED);
    assert.equal(lost.outcome, null);
    assert.equal(lost.kind, "warn");
  });

  test("shows a reason it does not know as relay text", () => {
    assert.deepEqual(describeCancel("moved\u202E"), {
      text: ["the relay cancelled it (", { relay: "moved\u202E" }, ")"],
      outcome: "moved\u202E",
      kind: "info",
    });
    assert.equal(describeCancel("").outcome, "cancelled");
    assert.equal(describeCancel(undefined).outcome, "cancelled");
    // Prototype names are not reasons.
    assert.deepEqual(describeCancel("constructor").text, ["the relay cancelled it (", { relay: "constructor" }, ")"]);
  });
});

describe("backoffDelay", () => {
  const limits = { minMs: 500, maxMs: 30000 };

  test("doubles per attempt between half and all of the nominal delay", () => {
    for (let attempt = 0; attempt < 6; attempt++) {
      const nominal = 500 * 2 ** attempt;
      assert.equal(backoffDelay(attempt, limits, () => 0), nominal / 2);
      assert.equal(backoffDelay(attempt, limits, () => 0.999999), Math.round(nominal * 0.9999995));
    }
  });

  test("is capped by maxMs, even for huge attempt numbers", () => {
    assert.equal(backoffDelay(10, limits, () => 0.999999), 30000);
    assert.equal(backoffDelay(5000, limits, () => 0), 15000);
    assert.equal(backoffDelay(-3, limits, () => 0), 250);
  });

  test("spreads clients with real randomness", () => {
    const seen = new Set(Array.from({ length: 50 }, () => backoffDelay(3, limits)));
    assert.ok(seen.size > 10);
    for (const d of seen) assert.ok(d >= 2000 && d <= 4000, `${d} out of range`);
  });
});

describe("relayUrlFor", () => {
  test("uses wss on https and ws on http, same host and port", () => {
    assert.equal(relayUrlFor({ protocol: "https:", host: "relay.example:8443" }), "wss://relay.example:8443/ws");
    assert.equal(relayUrlFor({ protocol: "http:", host: "127.0.0.1:8080" }), "ws://127.0.0.1:8080/ws");
  });
});

describe("parseRfc3339", () => {
  test("reads Go's RFC 3339 forms", () => {
    assert.equal(parseRfc3339("2025-03-04T05:06:07Z").toISOString(), "2025-03-04T05:06:07.000Z");
    assert.equal(parseRfc3339("2025-03-04T05:06:07.123456789Z").toISOString(), "2025-03-04T05:06:07.123Z");
    assert.equal(parseRfc3339("2025-03-04T07:06:07.5+02:00").toISOString(), "2025-03-04T05:06:07.500Z");
    assert.equal(parseRfc3339("2025-03-04T00:06:07-05:00").toISOString(), "2025-03-04T05:06:07.000Z");
  });

  test("refuses anything else", () => {
    for (const bad of ["2025-03-04", "2025-03-04 05:06:07Z", "2025-02-30T00:00:00Z", "2025-03-04T25:00:00Z", "yesterday", 1, undefined]) {
      assert.equal(parseRfc3339(bad), null, String(bad));
    }
  });
});

describe("parseFrame", () => {
  const nonce = encodeBase64(new Uint8Array(32).fill(7));
  const pk = encodeBase64(new Uint8Array(32).fill(1));
  const request = {
    type: "sign_request",
    request_id: "9b2f8c1e-0000-4000-8000-000000000001",
    message: encodeBase64(utf8("hello")),
    description: "greeting",
    expires_at: "2030-01-01T00:00:00Z",
  };

  test("decodes the frames of the contract", () => {
    assert.deepEqual(parseFrame(JSON.stringify({ type: "challenge", nonce })), {
      type: "challenge",
      nonce: new Uint8Array(32).fill(7),
    });
    assert.deepEqual(parseFrame(JSON.stringify({ type: "introduced", public_key: pk, session_id: "s1" })), {
      type: "introduced",
      publicKey: pk,
      sessionId: "s1",
    });
    assert.deepEqual(parseFrame(JSON.stringify(request)), {
      type: "sign_request",
      requestId: request.request_id,
      message: utf8("hello"),
      description: "greeting",
      requester: "",
      expiresAt: new Date("2030-01-01T00:00:00Z"),
    });
    assert.deepEqual(parseFrame('{"type":"sign_cancel","request_id":"r","reason":"timeout"}'), {
      type: "sign_cancel",
      requestId: "r",
      reason: "timeout",
    });
    assert.deepEqual(parseFrame('{"type":"error","code":"unknown_request","message":"m","request_id":"r"}'), {
      type: "error",
      code: "unknown_request",
      message: "m",
      requestId: "r",
    });
  });

  test("ignores unknown fields and passes unknown types through", () => {
    const f = parseFrame(JSON.stringify({ ...request, future: { x: 1 } }));
    assert.equal(f.requestId, request.request_id);
    assert.deepEqual(parseFrame('{"type":"hello_v2","x":1}'), { type: "hello_v2", unknown: true });
    assert.deepEqual(parseFrame('{"type":"toString"}'), { type: "toString", unknown: true });
  });

  test("reads an empty or missing description as empty", () => {
    assert.equal(parseFrame(JSON.stringify({ ...request, description: "" })).description, "");
    const { description, ...noDescription } = request;
    assert.equal(parseFrame(JSON.stringify(noDescription)).description, "");
  });

  test("reads an optional requester, ignoring one that is not a string", () => {
    assert.equal(parseFrame(JSON.stringify({ ...request, requester: "billing-service" })).requester, "billing-service");
    assert.equal(parseFrame(JSON.stringify({ ...request, requester: { name: "x" } })).requester, "");
    assert.equal(parseFrame(JSON.stringify({ ...request, requester: null })).requester, "");
  });

  test("refuses malformed frames", () => {
    const cases = [
      new Uint8Array([1, 2]),
      "not json",
      "[1,2]",
      "null",
      '"challenge"',
      '{"nonce":"x"}',
      '{"type":7}',
      JSON.stringify({ type: "challenge", nonce: encodeBase64(new Uint8Array(31)) }),
      JSON.stringify({ type: "challenge", nonce: nonce.slice(0, -1) }),
      JSON.stringify({ type: "introduced", public_key: pk }),
      JSON.stringify({ type: "introduced", public_key: "abc", session_id: "s" }),
      JSON.stringify({ ...request, request_id: 5 }),
      JSON.stringify({ ...request, description: 5 }),
      JSON.stringify({ ...request, expires_at: "soon" }),
      JSON.stringify({ type: "sign_cancel", request_id: "r" }),
      JSON.stringify({ type: "error", message: "no code" }),
    ];
    for (const data of cases) {
      assert.throws(() => parseFrame(data), ProtocolError, `should refuse ${String(data)}`);
    }
  });

  test("names the request of a malformed sign_request", () => {
    try {
      parseFrame(JSON.stringify({ ...request, message: "not base64!" }));
      assert.fail("should throw");
    } catch (err) {
      assert.ok(err instanceof ProtocolError);
      assert.equal(err.requestId, request.request_id);
    }
  });
});

describe("keys on Node's WebCrypto", () => {
  test("Ed25519 is supported here", async () => {
    assert.deepEqual(await checkSupport(), { ok: true });
  });

  test("generated private keys are not extractable, public keys are", async () => {
    const pair = await generateKeyPair();
    assert.equal(pair.privateKey.extractable, false);
    await assert.rejects(crypto.subtle.exportKey("pkcs8", pair.privateKey));
    const pk = await exportPublicKey(pair.publicKey);
    assert.equal(decodeBase64(pk).length, 32);
  });

  test("signatures are plain Ed25519 that node:crypto verifies", async () => {
    const pair = await generateKeyPair();
    const pk = await exportPublicKey(pair.publicKey);
    const message = utf8("sign me");
    const signature = await signBytes(pair.privateKey, message);
    assert.equal(signature.length, 64);
    assert.ok(nodeVerify(pk, message, signature));
    assert.ok(await verifySignature(pk, message, signature));
    assert.ok(!(await verifySignature(pk, utf8("sign me!"), signature)));
  });
});

// ---------------------------------------------------------------------------
// The client against a fake relay that speaks the contract from the relay's
// side, driven step by step by each test.

/** Frames of one server-side connection, awaited one at a time. */
class FakeConnection {
  constructor(socket) {
    this.socket = socket;
    this.frames = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => socket.on("close", (code) => resolve(code)));
    socket.on("message", (data) => {
      const frame = JSON.parse(String(data));
      const waiter = this.waiters.shift();
      if (waiter) waiter(frame);
      else this.frames.push(frame);
    });
  }

  next() {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    return withTimeout(new Promise((resolve) => this.waiters.push(resolve)), "frame from client");
  }

  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  /** Plays the relay's side of the introduction and checks the proof. */
  async introduce(sessionId = "session-1") {
    const nonce = nodeCrypto.randomBytes(32);
    this.send({ type: "challenge", nonce: nonce.toString("base64") });
    const intro = await this.next();
    assert.equal(intro.type, "introduction");
    assert.ok(
      nodeVerify(intro.public_key, introductionMessage(new Uint8Array(nonce)), decodeBase64(intro.signature)),
      "introduction signature must verify",
    );
    this.publicKey = intro.public_key;
    this.send({ type: "introduced", public_key: intro.public_key, session_id: sessionId });
    return intro;
  }
}

class FakeRelay {
  async start() {
    this.connections = [];
    this.waiters = [];
    this.server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((resolve) => this.server.once("listening", resolve));
    this.url = `ws://127.0.0.1:${this.server.address().port}/ws`;
    this.server.on("connection", (socket) => {
      const conn = new FakeConnection(socket);
      const waiter = this.waiters.shift();
      if (waiter) waiter(conn);
      else this.connections.push(conn);
    });
  }

  nextConnection() {
    if (this.connections.length) return Promise.resolve(this.connections.shift());
    return withTimeout(new Promise((resolve) => this.waiters.push(resolve)), "connection from client");
  }

  async stop() {
    for (const client of this.server.clients) client.terminate();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

function withTimeout(promise, what, ms = 5000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the detail of the next `type` event that passes `match`. */
function nextEvent(target, type, match = () => true) {
  return withTimeout(
    new Promise((resolve) => {
      const listener = (ev) => {
        if (!match(ev.detail)) return;
        target.removeEventListener(type, listener);
        resolve(ev.detail);
      };
      target.addEventListener(type, listener);
    }),
    `"${type}" event`,
  );
}

const isState = (state) => (d) => d.state === state;

function signRequest(id, message, extra = {}) {
  return {
    type: "sign_request",
    request_id: id,
    message: encodeBase64(message),
    description: `request ${id}`,
    expires_at: new Date(Date.now() + 60000).toISOString(),
    ...extra,
  };
}

describe("RelayClient against a fake relay", () => {
  const relay = new FakeRelay();
  let keyPair;
  let publicKey;
  const clients = [];

  before(async () => {
    await relay.start();
    keyPair = await generateKeyPair();
    publicKey = await exportPublicKey(keyPair.publicKey);
  });

  after(async () => {
    for (const c of clients) c.close();
    await relay.stop();
  });

  function newClient(options = {}) {
    const client = new RelayClient({
      url: relay.url,
      keyPair,
      WebSocket,
      reconnect: { minMs: 20, maxMs: 100 },
      ...options,
    });
    clients.push(client);
    return client;
  }

  async function connected(client) {
    const state = nextEvent(client, "state", isState("connected"));
    client.connect();
    const conn = await relay.nextConnection();
    await conn.introduce();
    await state;
    return conn;
  }

  test("introduces itself with a proof of possession", async () => {
    const client = newClient();
    const states = [];
    client.addEventListener("state", (ev) => states.push(ev.detail.state));
    const conn = await connected(client);
    assert.equal(conn.publicKey, publicKey);
    assert.equal(client.state, "connected");
    assert.equal(client.sessionId, "session-1");
    assert.deepEqual(states, ["connecting", "connected"]);
    client.close();
    assert.equal(await conn.closed, 1000);
    assert.equal(client.state, "closed");
  });

  test("approve signs exactly the requested bytes and echoes the message", async () => {
    const client = newClient();
    const conn = await connected(client);
    const message = new Uint8Array([0, 1, 2, 250, 251, 252]);
    const requested = nextEvent(client, "request");
    conn.send(signRequest("req-1", message, { description: "binary thing", requester: "build-server" }));
    const req = await requested;
    assert.equal(req.requestId, "req-1");
    assert.deepEqual(req.message, message);
    assert.equal(req.description, "binary thing");
    assert.equal(req.requester, "build-server");
    assert.ok(req.expiresAt instanceof Date);
    assert.equal(client.requests.length, 1);

    await client.approve("req-1");
    const response = await conn.next();
    assert.equal(response.type, "sign_response");
    assert.equal(response.request_id, "req-1");
    assert.equal(response.message, encodeBase64(message));
    assert.ok(nodeVerify(publicKey, message, decodeBase64(response.signature)));
    assert.equal(client.requests.length, 0);
    await assert.rejects(client.approve("req-1"), /no pending request/);
    client.close();
  });

  test("reject sends sign_reject with the reason", async () => {
    const client = newClient();
    const conn = await connected(client);
    const requested = nextEvent(client, "request");
    conn.send(signRequest("req-2", utf8("no thanks")));
    await requested;
    client.reject("req-2", "not today");
    assert.deepEqual(await conn.next(), { type: "sign_reject", request_id: "req-2", reason: "not today" });
    assert.throws(() => client.reject("req-2"), /no pending request/);
    client.close();
  });

  test("sign_cancel removes the request; duplicates and unknown ids are ignored", async () => {
    const client = newClient();
    const conn = await connected(client);
    let requests = 0;
    client.addEventListener("request", () => requests++);
    const first = nextEvent(client, "request");
    conn.send(signRequest("req-3", utf8("a")));
    conn.send(signRequest("req-3", utf8("a")));
    await first;
    const cancelled = nextEvent(client, "cancel");
    conn.send({ type: "sign_cancel", request_id: "unknown", reason: "timeout" });
    conn.send({ type: "sign_cancel", request_id: "req-3", reason: "answered_elsewhere" });
    assert.deepEqual(await cancelled, { requestId: "req-3", reason: "answered_elsewhere", requester: "" });
    assert.equal(requests, 1);
    assert.equal(client.requests.length, 0);
    client.close();
  });

  test("a request its backend takes back is cancelled with reason 'cancelled' and says who asked", async () => {
    assert.ok(RELAY_CANCEL_REASONS.includes("cancelled"));
    const client = newClient();
    const conn = await connected(client);
    const requested = nextEvent(client, "request");
    // An asynchronous request: ten minutes to its deadline.
    const expiresAt = new Date(Date.now() + 600_000);
    conn.send(signRequest("req-async", utf8("invoice 7"), { requester: "billing", expires_at: expiresAt.toISOString() }));
    const req = await requested;
    assert.equal(req.requester, "billing");
    assert.equal(req.expiresAt.getTime(), expiresAt.getTime());
    assert.deepEqual(
      client.requests.map((r) => [r.requestId, r.requester]),
      [["req-async", "billing"]],
    );
    const cancelled = nextEvent(client, "cancel");
    conn.send({ type: "sign_cancel", request_id: "req-async", reason: "cancelled" });
    assert.deepEqual(await cancelled, { requestId: "req-async", reason: "cancelled", requester: "billing" });
    assert.equal(client.requests.length, 0);
    await assert.rejects(client.approve("req-async"), /no pending request/);

    // A dropped connection names the requester of what it drops too.
    const again = nextEvent(client, "request");
    conn.send(signRequest("req-drop", utf8("x"), { requester: "billing" }));
    await again;
    const dropped = nextEvent(client, "cancel");
    client.close();
    assert.deepEqual(await dropped, { requestId: "req-drop", reason: "disconnected", requester: "billing" });
  });

  test("requests sent right behind 'introduced' are not lost", async () => {
    const client = newClient();
    const requested = nextEvent(client, "request");
    client.connect();
    const conn = await relay.nextConnection();
    const nonce = nodeCrypto.randomBytes(32);
    conn.send({ type: "challenge", nonce: nonce.toString("base64") });
    const intro = await conn.next();
    // Both in one go, as a relay redelivering a pending request would (a
    // request made with wait_for_holder before this key was connected).
    conn.send({ type: "introduced", public_key: intro.public_key, session_id: "s" });
    conn.send(signRequest("redelivered", utf8("still waiting"), { requester: "billing" }));
    const req = await requested;
    assert.equal(req.requestId, "redelivered");
    assert.equal(req.requester, "billing");
    client.close();
  });

  test("reports error frames and declines requests it cannot read", async () => {
    const client = newClient();
    const conn = await connected(client);
    const relayError = nextEvent(client, "error");
    conn.send({ type: "error", code: "unknown_request", message: "no such request", request_id: "zzz" });
    assert.deepEqual(await relayError, { code: "unknown_request", message: "no such request", requestId: "zzz" });

    const localError = nextEvent(client, "error");
    conn.send({ ...signRequest("bad-1", utf8("x")), message: "%%%" });
    const err = await localError;
    assert.equal(err.code, "malformed_frame");
    assert.equal(err.requestId, "bad-1");
    const reject = await conn.next();
    assert.equal(reject.type, "sign_reject");
    assert.equal(reject.request_id, "bad-1");

    conn.send({ type: "some_future_frame" });
    conn.send(signRequest("after", utf8("still works")));
    const req = await nextEvent(client, "request");
    assert.equal(req.requestId, "after");
    client.close();
  });

  test("reconnects with backoff after a drop and introduces itself again", async () => {
    const client = newClient();
    const conn = await connected(client);
    const requested = nextEvent(client, "request");
    conn.send(signRequest("req-4", utf8("pending across the drop")));
    await requested;

    const cancelled = nextEvent(client, "cancel");
    const reconnecting = nextEvent(client, "state", isState("reconnecting"));
    conn.socket.close(1001, "shutting down");
    assert.deepEqual(await cancelled, { requestId: "req-4", reason: "disconnected", requester: "" });
    const r = await reconnecting;
    assert.equal(r.code, 1001);
    assert.ok(r.delayMs >= 10 && r.delayMs <= 20, `first delay ${r.delayMs}`);
    assert.ok(r.at instanceof Date);

    const again = await relay.nextConnection();
    const reconnected = nextEvent(client, "state", isState("connected"));
    await again.introduce("session-2");
    await reconnected;
    assert.equal(client.sessionId, "session-2");

    // The relay redelivers what is still pending; it shows up again.
    const redelivered = nextEvent(client, "request");
    again.send(signRequest("req-4", utf8("pending across the drop")));
    assert.equal((await redelivered).requestId, "req-4");
    client.close();
  });

  test("keeps retrying while the relay cannot be reached", async () => {
    const down = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((resolve) => down.once("listening", resolve));
    const url = `ws://127.0.0.1:${down.address().port}/ws`;
    await new Promise((resolve) => down.close(resolve));
    const client = newClient({ url });
    const delays = [];
    const third = nextEvent(client, "state", (d) => d.state === "reconnecting" && delays.push(d.delayMs) >= 3);
    client.connect();
    await third;
    assert.ok(delays[2] >= 40 && delays[2] <= 80, `third delay ${delays[2]}`);
    client.close();
    assert.equal(client.state, "closed");
  });

  test("a failed introduction ends in 'rejected' with the relay's reason and no retry", async () => {
    const client = newClient();
    const rejected = nextEvent(client, "state", isState("rejected"));
    client.connect();
    const conn = await relay.nextConnection();
    conn.send({ type: "challenge", nonce: encodeBase64(new Uint8Array(32)) });
    await conn.next();
    conn.send({ type: "error", code: "introduction_failed", message: "signature does not verify" });
    conn.socket.close(4401, "introduction failed");
    assert.deepEqual(await rejected, { state: "rejected", reason: "signature does not verify" });

    // reconnectNow() is the way to try again.
    client.reconnectNow();
    const again = await relay.nextConnection();
    const ok = nextEvent(client, "state", isState("connected"));
    await again.introduce();
    await ok;
    client.close();
  });

  test("gives up on a relay that never sends its challenge", async () => {
    const client = newClient({ introductionTimeoutMs: 100 });
    client.connect();
    const silent = await relay.nextConnection();
    const r = await nextEvent(client, "state", isState("reconnecting"));
    assert.equal(r.code, 4000);
    await silent.closed;
    const next = await relay.nextConnection();
    const ok = nextEvent(client, "state", isState("connected"));
    await next.introduce();
    await ok;
    client.close();
  });

  test("refuses to answer while disconnected", async () => {
    const client = newClient();
    assert.throws(() => client.reject("nothing"), /no pending request/);
    assert.throws(() => new RelayClient({ url: relay.url }), /keyPair/);
    assert.throws(() => new RelayClient({ keyPair, WebSocket }), /url/);
  });
});
