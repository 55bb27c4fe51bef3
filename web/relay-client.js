// Key-holder client for the signing relay (wire contract v1.1, see PROTOCOL.md).
//
// A plain ES module with no DOM use and no dependencies, so it runs unchanged
// in browsers and in Node 20+. It needs only globalThis.crypto.subtle (with
// Ed25519) and a WebSocket constructor (the global one, or one passed in).
// The API is documented in docs/browser-client.md.

/** Prefix of the bytes a key holder signs to answer the relay's challenge. */
export const INTRODUCTION_CONTEXT = "signing-relay/v1/introduction:";

/** Close code the relay uses when an introduction fails. */
export const CLOSE_INTRODUCTION_FAILED = 4401;

/**
 * The reasons of the relay's sign_cancel in the contract: the request timed
 * out, another connection of the key answered it, the backend's call went
 * away, the relay is shutting down, or the backend took the request back
 * (DELETE /sign/{id}). A newer relay may send others; they are passed on.
 */
export const RELAY_CANCEL_REASONS = Object.freeze([
  "timeout",
  "answered_elsewhere",
  "requester_gone",
  "shutdown",
  "cancelled",
]);

/** The cancel reason this client gives when it lost its own connection. */
export const CANCEL_DISCONNECTED = "disconnected";

const NONCE_SIZE = 32;
const PUBLIC_KEY_SIZE = 32;
const SIGNATURE_SIZE = 64;
const WS_OPEN = 1;

/** A frame from the relay that does not follow the contract. */
export class ProtocolError extends Error {
  /** @param {string} message @param {{requestId?: string}} [info] */
  constructor(message, info = {}) {
    super(message);
    this.name = "ProtocolError";
    this.requestId = info.requestId;
  }
}

// ---------------------------------------------------------------------------
// Base64: the contract allows only standard base64 with padding. atob alone is
// too lenient (it drops whitespace and accepts missing padding), so the shape
// is checked first and the result must re-encode to the same text, which also
// rejects non-zero trailing bits.

const BASE64_SHAPE =
  /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** @param {Uint8Array | ArrayBuffer} input @returns {string} */
export function encodeBase64(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  let binary = "";
  // Chunked so that large messages do not overflow the argument limit.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** @param {string} text @returns {Uint8Array} @throws {TypeError} */
export function decodeBase64(text) {
  if (typeof text !== "string" || !BASE64_SHAPE.test(text)) {
    throw new TypeError("not standard padded base64");
  }
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  if (encodeBase64(bytes) !== text) {
    throw new TypeError("not canonical base64");
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Pure protocol helpers.

/** The bytes signed to answer a challenge: the ASCII context, then the nonce. */
export function introductionMessage(nonce) {
  if (!(nonce instanceof Uint8Array) || nonce.length !== NONCE_SIZE) {
    throw new TypeError(`nonce must be ${NONCE_SIZE} bytes`);
  }
  const context = new TextEncoder().encode(INTRODUCTION_CONTEXT);
  const out = new Uint8Array(context.length + nonce.length);
  out.set(context, 0);
  out.set(nonce, context.length);
  return out;
}

// Characters a person cannot see or that change how the rest reads (control
// and format characters, such as bidi overrides): a message holding them is
// shown as hex so that what is displayed is exactly what gets signed.
// Tab, newline, carriage return and the zero-width joiner of emoji sequences
// are let through.
const HIDDEN_CHARS = /[\p{Cc}\p{Cf}\p{Co}\p{Cs}]/u;
const ALLOWED_HIDDEN = new Set(["\t", "\n", "\r", "\u200d"]);

/** @param {string} text */
function isPrintable(text) {
  for (const ch of text) {
    if (HIDDEN_CHARS.test(ch) && !ALLOWED_HIDDEN.has(ch)) return false;
  }
  return true;
}

/**
 * How to show a message to a person: UTF-8 text when it decodes and is
 * printable, hex otherwise.
 * @param {Uint8Array} bytes
 * @returns {{kind: "text" | "hex", text: string, byteLength: number}}
 */
export function renderMessage(bytes) {
  try {
    const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
    if (isPrintable(text)) return { kind: "text", text, byteLength: bytes.length };
  } catch {
    // Not valid UTF-8: fall through to hex.
  }
  return { kind: "hex", text: toHex(bytes), byteLength: bytes.length };
}

/** Lowercase hex, one space between bytes so long runs wrap at byte edges. */
export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** "1 byte", "12 bytes". */
export function formatByteCount(n) {
  return n === 1 ? "1 byte" : `${n.toLocaleString("en-US")} bytes`;
}

/**
 * Delay before reconnect attempt number `attempt` (0 for the first retry):
 * exponential growth capped at maxMs, with "equal jitter" (half fixed, half
 * random) so that many tabs dropped by one relay restart do not all come back
 * in the same instant, yet none retries faster than half the nominal delay.
 * @param {number} attempt
 * @param {{minMs: number, maxMs: number}} limits
 * @param {() => number} [random] returns a number in [0, 1)
 */
export function backoffDelay(attempt, { minMs, maxMs }, random = Math.random) {
  const nominal = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt));
  return Math.round(nominal / 2 + random() * (nominal / 2));
}

/** URL of the relay's /ws endpoint on the origin of `location`. */
export function relayUrlFor(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

// ---------------------------------------------------------------------------
// Frame parsing. Each known frame type is validated and turned into a plain
// object with decoded fields; unknown types come back as {type, unknown: true}
// so that a newer relay does not break an older client.

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * Parses an RFC 3339 timestamp. Written out rather than left to Date.parse,
 * whose handling of Go's nanosecond fractions differs between engines.
 * @returns {Date | null}
 */
export function parseRfc3339(text) {
  const m = typeof text === "string" ? RFC3339.exec(text) : null;
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number);
  const [frac, zone] = [m[7], m[8]];
  const ms = frac ? Math.floor(Number(`0${frac}`) * 1000) : 0;
  const local = new Date(Date.UTC(y, mo - 1, d, h, mi, s, ms));
  // Date.UTC rolls over out-of-range parts (February 31st, hour 25): refuse
  // those instead of showing a different time than the relay meant.
  if (local.getUTCMonth() !== mo - 1 || local.getUTCDate() !== d || h > 23 || mi > 59 || s > 59) {
    return null;
  }
  let offsetMinutes = 0;
  if (zone !== "Z" && zone !== "z") {
    const sign = zone[0] === "-" ? -1 : 1;
    offsetMinutes = sign * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6)));
  }
  return new Date(local.getTime() - offsetMinutes * 60000);
}

function requireString(obj, field, info) {
  if (typeof obj[field] !== "string") {
    throw new ProtocolError(`${obj.type}: field "${field}" must be a string`, info);
  }
  return obj[field];
}

function requireBytes(obj, field, size, info) {
  const text = requireString(obj, field, info);
  let bytes;
  try {
    bytes = decodeBase64(text);
  } catch (err) {
    throw new ProtocolError(`${obj.type}: field "${field}" is ${err.message}`, info);
  }
  if (size !== undefined && bytes.length !== size) {
    throw new ProtocolError(`${obj.type}: field "${field}" must be ${size} bytes`, info);
  }
  return bytes;
}

const FRAME_PARSERS = {
  challenge: (f) => ({ type: f.type, nonce: requireBytes(f, "nonce", NONCE_SIZE) }),

  introduced: (f) => {
    requireBytes(f, "public_key", PUBLIC_KEY_SIZE);
    return { type: f.type, publicKey: f.public_key, sessionId: requireString(f, "session_id") };
  },

  sign_request: (f) => {
    const requestId = requireString(f, "request_id");
    const info = { requestId };
    const message = requireBytes(f, "message", undefined, info);
    // The contract says the description may be empty; an absent one is read
    // the same way rather than refusing an otherwise valid request.
    const description = f.description === undefined ? "" : requireString(f, "description", info);
    const expiresAt = parseRfc3339(requireString(f, "expires_at", info));
    if (!expiresAt) throw new ProtocolError("sign_request: expires_at is not RFC 3339", info);
    // Who asked, when the relay says so (a newer field): optional, and read as
    // "" when absent or not a string, like any field this client does not know.
    const requester = typeof f.requester === "string" ? f.requester : "";
    return { type: f.type, requestId, message, description, requester, expiresAt };
  },

  sign_cancel: (f) => ({
    type: f.type,
    requestId: requireString(f, "request_id"),
    reason: requireString(f, "reason"),
  }),

  error: (f) => ({
    type: f.type,
    code: requireString(f, "code"),
    message: typeof f.message === "string" ? f.message : "",
    requestId: typeof f.request_id === "string" ? f.request_id : undefined,
  }),
};

/**
 * Validates one WebSocket frame from the relay.
 * @param {unknown} data the MessageEvent's data
 * @throws {ProtocolError}
 */
export function parseFrame(data) {
  if (typeof data !== "string") throw new ProtocolError("binary frame");
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    throw new ProtocolError("frame is not JSON");
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    throw new ProtocolError("frame is not a JSON object");
  }
  if (typeof frame.type !== "string") throw new ProtocolError('frame has no string "type"');
  const parse = Object.hasOwn(FRAME_PARSERS, frame.type) ? FRAME_PARSERS[frame.type] : null;
  return parse ? parse(frame) : { type: frame.type, unknown: true };
}

// ---------------------------------------------------------------------------
// Keys.

const ED25519 = { name: "Ed25519" };

function subtle() {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) {
    throw new Error("WebCrypto is not available (a secure context — https or localhost — is needed)");
  }
  return s;
}

/**
 * A new Ed25519 key pair. The private key is non-extractable by default: it
 * can sign, be stored in IndexedDB and be loaded again, but its bytes can
 * never be read out by script.
 * @returns {Promise<CryptoKeyPair>}
 */
export function generateKeyPair({ extractable = false } = {}) {
  return subtle().generateKey(ED25519, extractable, ["sign", "verify"]);
}

/** Public keys stay exportable even when the private key is not. */
export async function exportPublicKey(publicKey) {
  return encodeBase64(await subtle().exportKey("raw", publicKey));
}

/** @returns {Promise<Uint8Array>} the 64-byte signature */
export async function signBytes(privateKey, bytes) {
  return new Uint8Array(await subtle().sign(ED25519, privateKey, bytes));
}

/** @returns {Promise<boolean>} */
export async function verifySignature(publicKeyBase64, bytes, signature) {
  const key = await subtle().importKey("raw", decodeBase64(publicKeyBase64), ED25519, true, ["verify"]);
  return subtle().verify(ED25519, key, signature, bytes);
}

/**
 * Whether this environment can do what the client needs. Feature detection by
 * trying, since no property tells whether an algorithm is implemented.
 * @returns {Promise<{ok: true} | {ok: false, reason: "insecure-context" | "no-webcrypto" | "no-ed25519"}>}
 */
export async function checkSupport() {
  if (globalThis.isSecureContext === false) return { ok: false, reason: "insecure-context" };
  if (!globalThis.crypto || !globalThis.crypto.subtle) return { ok: false, reason: "no-webcrypto" };
  try {
    const pair = await generateKeyPair();
    await signBytes(pair.privateKey, new Uint8Array(1));
    return { ok: true };
  } catch {
    return { ok: false, reason: "no-ed25519" };
  }
}

// ---------------------------------------------------------------------------
// The client.

const DEFAULT_RECONNECT = { minMs: 500, maxMs: 30000 };
// The relay closes a connection that has not introduced itself within its own
// deadline (10 s by default); this guards against a socket that never opens
// or a relay that never speaks, which would otherwise wait forever.
const DEFAULT_INTRODUCTION_TIMEOUT_MS = 20000;

/**
 * One key holder's connection to the relay, kept alive across drops.
 *
 * Events (all CustomEvent, payload in `detail`):
 * - "state":   {state: "connecting", attempt}
 *              {state: "connected", sessionId, publicKey}
 *              {state: "reconnecting", delayMs, at, attempt, code, reason}
 *              {state: "rejected", reason}
 *              {state: "closed"}
 * - "request": {requestId, message, description, requester, expiresAt}
 *              requester is the name of the API key that asks, set by the
 *              relay ("" for a key without a name); expiresAt may be minutes
 *              away for an asynchronous request
 * - "cancel":  {requestId, reason, requester}  reason is the relay's (one of
 *              RELAY_CANCEL_REASONS: timeout, answered_elsewhere,
 *              requester_gone, shutdown, cancelled — the backend took it
 *              back — or a newer one) or "disconnected" when this client
 *              lost its connection; requester is the request's
 * - "error":   {code, message, requestId?}  error frames from the relay, and
 *              local protocol problems (code "malformed_frame", local: true)
 */
export class RelayClient extends EventTarget {
  #url;
  #keyPair;
  #WebSocket;
  #reconnect;
  #introductionTimeoutMs;
  #publicKey; // Promise<string>
  #publicKeyText = null; // the same, once known

  #state = "idle";
  #socket = null;
  #generation = 0; // bumped per socket so that late events of old ones are ignored
  #attempt = 0;
  #retryTimer = null;
  #introTimer = null;
  #stopped = true;
  #introduced = false;
  #sessionId = null;
  #rejection = null;
  /** @type {Map<string, {requestId: string, message: Uint8Array, description: string, requester: string, expiresAt: Date, answering: boolean}>} */
  #pending = new Map();

  /**
   * @param {object} options
   * @param {string} options.url ws: or wss: URL of the relay's /ws
   * @param {CryptoKeyPair} options.keyPair Ed25519 key pair
   * @param {typeof WebSocket} [options.WebSocket] defaults to globalThis.WebSocket
   * @param {{minMs?: number, maxMs?: number}} [options.reconnect]
   * @param {number} [options.introductionTimeoutMs]
   */
  constructor({ url, keyPair, WebSocket, reconnect, introductionTimeoutMs } = {}) {
    super();
    if (typeof url !== "string") throw new TypeError("url is required");
    if (!keyPair || !keyPair.privateKey || !keyPair.publicKey) throw new TypeError("keyPair is required");
    this.#url = url;
    this.#keyPair = keyPair;
    this.#WebSocket = WebSocket || globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") throw new TypeError("no WebSocket implementation");
    this.#reconnect = { ...DEFAULT_RECONNECT, ...reconnect };
    this.#introductionTimeoutMs = introductionTimeoutMs ?? DEFAULT_INTRODUCTION_TIMEOUT_MS;
    this.#publicKey = exportPublicKey(keyPair.publicKey);
    this.#publicKey.then(
      (text) => (this.#publicKeyText = text),
      // Reported through the first introduction; an unhandled rejection
      // here would only repeat it.
      () => {},
    );
  }

  /** "idle" | "connecting" | "connected" | "reconnecting" | "rejected" | "closed" */
  get state() {
    return this.#state;
  }

  /** Session id given by the relay, while connected. */
  get sessionId() {
    return this.#sessionId;
  }

  /** The public key in base64. */
  publicKey() {
    return this.#publicKey;
  }

  /** Requests waiting for an answer, oldest first. */
  get requests() {
    return Array.from(this.#pending.values(), ({ answering, ...req }) => req);
  }

  /** Opens the connection; from then on it is kept up until close(). */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attempt = 0;
    this.#open();
  }

  /** Skips the wait of a scheduled reconnect (e.g. when the network is back). */
  reconnectNow() {
    if (this.#state !== "reconnecting" && this.#state !== "rejected") return;
    this.#stopped = false;
    clearTimeout(this.#retryTimer);
    this.#open();
  }

  /** Closes the connection for good. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    const socket = this.#socket;
    this.#detach();
    if (socket) socket.close(1000, "closed by key holder");
    this.#dropPending(CANCEL_DISCONNECTED);
    this.#setState({ state: "closed" });
  }

  /**
   * Signs exactly the requested bytes and sends the signature.
   * @returns {Promise<{requestId: string, signature: Uint8Array}>}
   */
  async approve(requestId) {
    const req = this.#takeForAnswer(requestId);
    let signature;
    try {
      signature = await signBytes(this.#keyPair.privateKey, req.message);
    } catch (err) {
      req.answering = false;
      throw err;
    }
    // The request may have been cancelled, or the socket replaced, while
    // signing: answering it then would only earn an unknown_request error.
    if (this.#pending.get(requestId) !== req) {
      throw new Error(`request ${requestId} ended before it could be answered`);
    }
    this.#send({
      type: "sign_response",
      request_id: requestId,
      message: encodeBase64(req.message),
      signature: encodeBase64(signature),
    });
    this.#pending.delete(requestId);
    return { requestId, signature };
  }

  /** Declines the request; `reason` is passed on to the relay. */
  reject(requestId, reason = "") {
    this.#takeForAnswer(requestId);
    this.#send({ type: "sign_reject", request_id: requestId, reason: String(reason) });
    this.#pending.delete(requestId);
  }

  // -- connection lifecycle -------------------------------------------------

  #open() {
    this.#detach();
    this.#introduced = false;
    this.#sessionId = null;
    this.#rejection = null;
    const generation = ++this.#generation;
    this.#setState({ state: "connecting", attempt: this.#attempt });

    let socket;
    try {
      socket = new this.#WebSocket(this.#url);
    } catch (err) {
      this.#emit("error", { code: "connect_failed", message: String(err.message || err), local: true });
      this.#scheduleReconnect({ code: 0, reason: "could not open socket" });
      return;
    }
    this.#socket = socket;
    const current = () => generation === this.#generation;
    socket.addEventListener("message", (ev) => current() && this.#onMessage(ev.data));
    socket.addEventListener("close", (ev) => current() && this.#onClose(ev.code, ev.reason));
    // An "error" event is always followed by "close", which does the work.
    socket.addEventListener("error", () => {});

    this.#introTimer = setTimeout(() => {
      if (!current() || this.#introduced) return;
      // Treated as closed at once: a socket that is stuck may take long to
      // report its own close.
      const stuck = this.#socket;
      this.#detach();
      stuck.close(4000, "introduction timed out");
      this.#onClose(4000, "no introduction in time");
    }, this.#introductionTimeoutMs);
  }

  /** Forgets the current socket so its late events are ignored. */
  #detach() {
    clearTimeout(this.#introTimer);
    this.#generation++;
    this.#socket = null;
  }

  #onClose(code, reason) {
    this.#detach();
    this.#introduced = false;
    this.#sessionId = null;
    // Requests are tied to the connection that received them: the relay
    // redelivers the ones still pending once this key is introduced again.
    this.#dropPending(CANCEL_DISCONNECTED);
    if (this.#stopped) return;
    if (code === CLOSE_INTRODUCTION_FAILED) {
      // The same key would fail the same way again, so retrying on a timer
      // would only hammer the relay; reconnectNow() lets a person retry.
      this.#stopped = true;
      this.#setState({ state: "rejected", reason: this.#rejection || reason || "introduction failed" });
      return;
    }
    this.#scheduleReconnect({ code, reason });
  }

  #scheduleReconnect({ code, reason }) {
    const delayMs = backoffDelay(this.#attempt, this.#reconnect);
    const attempt = ++this.#attempt;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => this.#open(), delayMs);
    this.#setState({
      state: "reconnecting",
      delayMs,
      at: new Date(Date.now() + delayMs),
      attempt,
      code,
      reason: reason || "",
    });
  }

  // -- frames ----------------------------------------------------------------

  #onMessage(data) {
    let frame;
    try {
      frame = parseFrame(data);
    } catch (err) {
      this.#onBadFrame(err);
      return;
    }
    switch (frame.type) {
      case "challenge":
        return this.#onChallenge(frame);
      case "introduced":
        return this.#onIntroduced(frame);
      case "sign_request":
        return this.#onSignRequest(frame);
      case "sign_cancel":
        return this.#onSignCancel(frame);
      case "error":
        return this.#onError(frame);
      default:
        // Unknown frame types are a newer relay's business: ignored.
        return;
    }
  }

  #onBadFrame(err) {
    this.#emit("error", {
      code: "malformed_frame",
      message: err.message,
      requestId: err.requestId,
      local: true,
    });
    // A sign request this client cannot read could never be approved here;
    // declining it tells the backend at once instead of at its deadline.
    if (err.requestId && this.#introduced) {
      this.#send({
        type: "sign_reject",
        request_id: err.requestId,
        reason: `key holder could not read the request: ${err.message}`,
      });
    }
  }

  async #onChallenge({ nonce }) {
    const socket = this.#socket;
    if (this.#introduced || !socket) return;
    try {
      const publicKey = await this.#publicKey;
      const signature = await signBytes(this.#keyPair.privateKey, introductionMessage(nonce));
      if (socket !== this.#socket) return; // replaced while signing
      this.#send({ type: "introduction", public_key: publicKey, signature: encodeBase64(signature) });
    } catch (err) {
      this.#emit("error", { code: "introduction_failed", message: String(err.message || err), local: true });
    }
  }

  // Synchronous on purpose: the relay may send redelivered sign requests right
  // behind "introduced", and they must find the connection introduced.
  #onIntroduced({ publicKey, sessionId }) {
    if (!this.#socket || this.#introduced) return;
    if (publicKey !== this.#publicKeyText) {
      this.#emit("error", {
        code: "malformed_frame",
        message: "relay introduced a different public key",
        local: true,
      });
      return;
    }
    clearTimeout(this.#introTimer);
    this.#introduced = true;
    this.#sessionId = sessionId;
    this.#attempt = 0;
    this.#setState({ state: "connected", sessionId, publicKey });
  }

  #onSignRequest({ requestId, message, description, requester, expiresAt }) {
    // Before the introduction nothing may arrive; a redelivered request that
    // is already shown is not shown twice.
    if (!this.#introduced || this.#pending.has(requestId)) return;
    this.#pending.set(requestId, { requestId, message, description, requester, expiresAt, answering: false });
    this.#emit("request", { requestId, message, description, requester, expiresAt });
  }

  #onSignCancel({ requestId, reason }) {
    const req = this.#pending.get(requestId);
    if (!req) return;
    this.#pending.delete(requestId);
    this.#emit("cancel", { requestId, reason, requester: req.requester });
  }

  #onError({ code, message, requestId }) {
    if (code === "introduction_failed") this.#rejection = message || code;
    this.#emit("error", { code, message, requestId });
  }

  // -- helpers ---------------------------------------------------------------

  #takeForAnswer(requestId) {
    const req = this.#pending.get(requestId);
    if (!req) throw new Error(`no pending request ${requestId}`);
    if (req.answering) throw new Error(`request ${requestId} is already being answered`);
    if (!this.#socket || this.#socket.readyState !== WS_OPEN) {
      throw new Error("not connected to the relay");
    }
    req.answering = true;
    return req;
  }

  #send(frame) {
    if (this.#socket && this.#socket.readyState === WS_OPEN) {
      this.#socket.send(JSON.stringify(frame));
    }
  }

  #dropPending(reason) {
    const dropped = [...this.#pending.values()];
    this.#pending.clear();
    for (const { requestId, requester } of dropped) this.#emit("cancel", { requestId, reason, requester });
  }

  #setState(detail) {
    this.#state = detail.state;
    this.#emit("state", detail);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
