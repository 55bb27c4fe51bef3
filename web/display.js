// How the page shows text that comes from the relay or a backend (a request's
// description, a requester's name, the relay's error messages and reasons).
//
// Such text is shown as it is, except for characters a person cannot see or
// that change how the rest of the text reads: bidi controls (a right-to-left
// override can make "Pay \u202E01$ ot" read as something else), C0/C1 control
// characters (including tab, CR and LF), and invisible or format characters
// (zero-width space and joiners, soft hyphen, BOM, line and paragraph
// separators, tag characters, Hangul fillers, unpaired surrogates). Each of
// them is replaced by a visible token, ⟨U+202E⟩, and is never passed to the
// browser to interpret. Variation selectors are left alone: they only pick a
// glyph style (text or emoji) of the character before them.
//
// The pure part (splitHidden, displayText, hiddenCharWarning, and the card's
// words at the end: requesterParts, requestLabel, formatDuration,
// countdownText, describeCancel) has no DOM use, so unit tests import it in
// Node; renderInto and isolatedText build DOM nodes (text nodes and spans,
// never HTML parsing).

// Characters a person cannot see or that alter how other text is shown:
// controls (Cc), format characters (Cf, which holds every bidi control, the
// zero-width characters, the soft hyphen, the BOM and the tag characters),
// line and paragraph separators, code points that renderers ignore by default
// (Hangul fillers, combining grapheme joiner, Khmer inherent vowels, ...), and
// lone surrogates, which a JavaScript string can hold.
const HIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Default_Ignorable_Code_Point}]/u;

// Default-ignorable but harmless: variation selectors (U+FE00–U+FE0F,
// U+E0100–U+E01EF) and Mongolian free variation selectors choose a glyph for
// the character before them and cannot hide or reorder text.
const VARIATION_SELECTOR = /[\uFE00-\uFE0F\u180B-\u180D\u180F\u{E0100}-\u{E01EF}]/u;

const EMOJI = /\p{Extended_Pictographic}/u;
// What may stand between an emoji and the zero-width joiner of an emoji
// sequence: a variation selector or a skin-tone modifier.
const EMOJI_TRAIL = /[\uFE0E\uFE0F\u{1F3FB}-\u{1F3FF}]/u;

const ZWJ = "\u200D";

const NAMES = new Map([
  [0x00, "NULL"],
  [0x07, "BELL"],
  [0x08, "BACKSPACE"],
  [0x09, "CHARACTER TABULATION (TAB)"],
  [0x0a, "LINE FEED"],
  [0x0b, "LINE TABULATION"],
  [0x0c, "FORM FEED"],
  [0x0d, "CARRIAGE RETURN"],
  [0x1b, "ESCAPE"],
  [0x7f, "DELETE"],
  [0x85, "NEXT LINE"],
  [0xad, "SOFT HYPHEN"],
  [0x34f, "COMBINING GRAPHEME JOINER"],
  [0x61c, "ARABIC LETTER MARK"],
  [0x115f, "HANGUL CHOSEONG FILLER"],
  [0x1160, "HANGUL JUNGSEONG FILLER"],
  [0x17b4, "KHMER VOWEL INHERENT AQ"],
  [0x17b5, "KHMER VOWEL INHERENT AA"],
  [0x180e, "MONGOLIAN VOWEL SEPARATOR"],
  [0x200b, "ZERO WIDTH SPACE"],
  [0x200c, "ZERO WIDTH NON-JOINER"],
  [0x200d, "ZERO WIDTH JOINER"],
  [0x200e, "LEFT-TO-RIGHT MARK"],
  [0x200f, "RIGHT-TO-LEFT MARK"],
  [0x2028, "LINE SEPARATOR"],
  [0x2029, "PARAGRAPH SEPARATOR"],
  [0x202a, "LEFT-TO-RIGHT EMBEDDING"],
  [0x202b, "RIGHT-TO-LEFT EMBEDDING"],
  [0x202c, "POP DIRECTIONAL FORMATTING"],
  [0x202d, "LEFT-TO-RIGHT OVERRIDE"],
  [0x202e, "RIGHT-TO-LEFT OVERRIDE"],
  [0x2060, "WORD JOINER"],
  [0x2061, "FUNCTION APPLICATION"],
  [0x2062, "INVISIBLE TIMES"],
  [0x2063, "INVISIBLE SEPARATOR"],
  [0x2064, "INVISIBLE PLUS"],
  [0x2066, "LEFT-TO-RIGHT ISOLATE"],
  [0x2067, "RIGHT-TO-LEFT ISOLATE"],
  [0x2068, "FIRST STRONG ISOLATE"],
  [0x2069, "POP DIRECTIONAL ISOLATE"],
  [0x3164, "HANGUL FILLER"],
  [0xfeff, "ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK)"],
  [0xffa0, "HALFWIDTH HANGUL FILLER"],
  [0xfff9, "INTERLINEAR ANNOTATION ANCHOR"],
  [0xfffa, "INTERLINEAR ANNOTATION SEPARATOR"],
  [0xfffb, "INTERLINEAR ANNOTATION TERMINATOR"],
  [0xe0001, "LANGUAGE TAG"],
  [0xe007f, "CANCEL TAG"],
]);

/** "U+202E", "U+0007", "U+E0041". */
export function codePointLabel(cp) {
  return `U+${cp.toString(16).toUpperCase().padStart(4, "0")}`;
}

/** The visible stand-in of a hidden character: "⟨U+202E⟩". */
export function hiddenCharToken(cp) {
  return `\u27E8${codePointLabel(cp)}\u27E9`;
}

/** A name for a hidden character, for its tooltip and screen readers. */
export function hiddenCharName(cp) {
  const known = NAMES.get(cp);
  if (known) return known;
  if (cp < 0x20) return "CONTROL CHARACTER";
  if (cp >= 0x80 && cp <= 0x9f) return "C1 CONTROL CHARACTER";
  if (cp >= 0xd800 && cp <= 0xdfff) return "UNPAIRED SURROGATE";
  if (cp >= 0xe0020 && cp <= 0xe007e) return `TAG ${String.fromCharCode(cp - 0xe0000)}`;
  if (cp >= 0xe0000 && cp <= 0xe0fff) return "TAG OR IGNORABLE CHARACTER";
  if (cp >= 0x206a && cp <= 0x206f) return "DEPRECATED FORMAT CHARACTER";
  return "INVISIBLE OR FORMAT CHARACTER";
}

/** Whether one code point (a string of one code point) is shown as a token. */
export function isHiddenChar(ch) {
  return HIDDEN.test(ch) && !VARIATION_SELECTOR.test(ch);
}

/**
 * Splits text into what is shown as it is and what is shown as a token.
 * Text is walked by code point, so surrogate pairs (emoji, astral letters)
 * stay whole; a lone surrogate is a hidden character. A zero-width joiner
 * between two emoji (as in 👩‍👩‍👧) is part of an emoji sequence and kept:
 * it can only join pictures, not hide or reorder text.
 * @param {string} text
 * @returns {{segments: Array<{text: string} | {codePoint: number, label: string, name: string, token: string}>, hiddenCount: number}}
 */
export function splitHidden(text) {
  const chars = Array.from(typeof text === "string" ? text : String(text ?? ""));
  const segments = [];
  let run = "";
  let hiddenCount = 0;
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i];
    if (!isHiddenChar(ch) || (ch === ZWJ && joinsEmoji(chars, i))) {
      run += ch;
      continue;
    }
    if (run) segments.push({ text: run });
    run = "";
    const cp = ch.codePointAt(0);
    segments.push({ codePoint: cp, label: codePointLabel(cp), name: hiddenCharName(cp), token: hiddenCharToken(cp) });
    hiddenCount++;
  }
  if (run) segments.push({ text: run });
  return { segments, hiddenCount };
}

function joinsEmoji(chars, i) {
  let before = i - 1;
  while (before >= 0 && EMOJI_TRAIL.test(chars[before])) before--;
  return before >= 0 && EMOJI.test(chars[before]) && i + 1 < chars.length && EMOJI.test(chars[i + 1]);
}

/**
 * The text as a plain string with every hidden character replaced by its
 * token: for places that take a string only (attributes such as title,
 * screen-reader announcements).
 */
export function displayText(text) {
  return splitHidden(text)
    .segments.map((s) => (s.token === undefined ? s.text : s.token))
    .join("");
}

/**
 * Puts `text` into `el` (replacing what it held) as text nodes and, for each
 * hidden character, a <span class="ctrl"> showing its token and naming it.
 * Nothing is parsed as HTML.
 * @param {Element} el
 * @param {string} text
 * @returns {number} how many hidden characters were replaced
 */
export function renderInto(el, text) {
  const { segments, hiddenCount } = splitHidden(text);
  const doc = el.ownerDocument;
  el.replaceChildren(...segments.map((s) => (s.token === undefined ? doc.createTextNode(s.text) : tokenNode(doc, s))));
  return hiddenCount;
}

function tokenNode(doc, { label, name, token }) {
  const span = doc.createElement("span");
  span.className = "ctrl";
  // Read left to right whatever the text around it, as one unit.
  span.dir = "ltr";
  // role="img" makes the name below what a screen reader says for the token.
  span.setAttribute("role", "img");
  span.setAttribute("aria-label", `hidden character ${label} ${name.toLowerCase()}`);
  span.title = `${label} ${name}: a hidden or control character, shown here instead of being applied`;
  span.dataset.codePoint = label;
  span.textContent = token;
  return span;
}

/**
 * An element (default <bdi>) holding untrusted text rendered by renderInto:
 * for relay text that stands inside a sentence of the page, so that a
 * right-to-left text cannot reorder the words around it.
 * @returns {{node: Element, hiddenCount: number}}
 */
export function isolatedText(doc, text, tag = "bdi") {
  const node = doc.createElement(tag);
  node.className = "relay-text";
  const hiddenCount = renderInto(node, text);
  return { node, hiddenCount };
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

/**
 * The warning line of a card whose texts held hidden characters, or "" when
 * none did.
 * @param {{description?: number, requester?: number}} counts
 */
export function hiddenCharWarning({ description = 0, requester = 0 } = {}) {
  const what = (n) => plural(n, "hidden or control character", "hidden or control characters");
  const tail = `, shown as \u27E8U+\u2026\u27E9.`;
  if (description && requester) {
    return `This description contains ${what(description)} and the requester name ${requester}${tail}`;
  }
  if (description) return `This description contains ${what(description)}${tail}`;
  if (requester) return `The requester name contains ${what(requester)}${tail}`;
  return "";
}

// ---------------------------------------------------------------------------
// The card's words: who asks, how long is left, why a request went away.
// Pure, like the functions above; the page puts the parts in with its
// appendParts, where {relay: text} goes through isolatedText.

/**
 * The line of a card that says who asks: the requester is the name of the
 * API key the backend used, set by the relay ("billing asks you to sign").
 * A key without a name has none: [] then, and the line is not shown.
 * @param {string} requester
 * @returns {Array<string | {relay: string}>}
 */
export function requesterParts(requester) {
  if (typeof requester !== "string" || requester === "") return [];
  return [{ relay: requester }, " asks you to sign"];
}

/**
 * How a card names its request in notices: the description in quotes, and
 * who asked when the relay named them.
 * @param {{description?: string, requester?: string}} request
 * @returns {Array<string | {relay: string}>}
 */
export function requestLabel({ description = "", requester = "" } = {}) {
  const what = description ? ["\u201C", { relay: description }, "\u201D"] : ["A request with no description"];
  return requester ? [...what, " from ", { relay: requester }] : what;
}

/**
 * Time left, rounded up to the whole second: "42 s", "9 min 05 s", and from
 * an hour on "1 h 05 min" (asynchronous requests may wait up to the relay's
 * sign.max_async_timeout, ten minutes by default and possibly hours).
 * @param {number} ms
 */
export function formatDuration(ms) {
  const total = Number.isFinite(ms) ? Math.max(0, Math.ceil(ms / 1000)) : 0;
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (h > 0) return `${h} h ${pad(m)} min`;
  if (m > 0) return `${m} min ${pad(s)} s`;
  return `${s} s`;
}

/** Below this much time left a countdown is shown as urgent. */
export const COUNTDOWN_SOON_MS = 10_000;

/**
 * The countdown of a card, `msLeft` before its deadline.
 * @returns {{text: string, soon: boolean}}
 */
export function countdownText(msLeft) {
  if (!(msLeft > 0)) return { text: "Expiring\u2026", soon: true };
  return { text: `Expires in ${formatDuration(msLeft)}`, soon: msLeft < COUNTDOWN_SOON_MS };
}

// Why a request went away without this tab's answer, by the relay's
// sign_cancel reason (and the client's own "disconnected"): the words of the
// notice, and the outcome listed in the history (null: not an outcome,
// since the relay redelivers it).
const CANCEL_WORDS = {
  timeout: { text: "it timed out", outcome: "timed out", kind: "info" },
  answered_elsewhere: { text: "it was answered in another tab or device", outcome: "answered elsewhere", kind: "info" },
  requester_gone: { text: "the requester went away", outcome: "requester gone", kind: "info" },
  cancelled: { text: "it was cancelled by the requester", outcome: "cancelled by the requester", kind: "info" },
  shutdown: { text: "the relay is shutting down", outcome: "relay shut down", kind: "info" },
  disconnected: {
    text: "the connection to the relay was lost; it comes back once reconnected if it is still waiting",
    outcome: null,
    kind: "warn",
  },
};

/**
 * What the page says when a request is cancelled with `reason`. A reason
 * this page does not know (a newer relay's) is relay text, shown as such.
 * @param {string} reason
 * @returns {{text: Array<string | {relay: string}>, outcome: string | null, kind: "info" | "warn"}}
 */
export function describeCancel(reason) {
  if (Object.hasOwn(CANCEL_WORDS, reason)) {
    const { text, outcome, kind } = CANCEL_WORDS[reason];
    return { text: [text], outcome, kind };
  }
  const shown = typeof reason === "string" ? reason : String(reason ?? "");
  return { text: ["the relay cancelled it (", { relay: shown }, ")"], outcome: shown || "cancelled", kind: "info" };
}
