// node-relay.mjs: the yardstick of issue 11's target 3, a Node.js relay
// built on `ws` that does the job the Go relay does on the hot path, and
// no more: the challenge and a verified introduction per connection,
// POST /sign with a bearer API key, a sign_request to every live
// connection of the key, the first answer whose signature verifies (with
// Node's crypto) wins and is returned, sign_cancel to the others, 404 for
// a key with no connection, 504 at the deadline. No rate limits, no
// resources, no cluster: the Go relay's figures in docs/benchmarks.md are
// taken with rate limits off too.
//
//   node scripts/node-relay.mjs 127.0.0.1:19392 API_KEY
//
// GET /readyz answers 200, so signrelay-bench and scripts can wait for it.

import { createServer } from "node:http";
import { randomBytes, randomUUID, createPublicKey, verify } from "node:crypto";
import { WebSocketServer } from "ws";

const [listen = "127.0.0.1:19392", apiKey = "bench-api-key-0123456789abcdef"] = process.argv.slice(2);
const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), Number(listen.slice(listen.lastIndexOf(":") + 1))];
const auth = "Bearer " + apiKey;
const introContext = Buffer.from("signing-relay/v1/introduction:");
const spkiPrefix = Buffer.from("302a300506032b6570032100", "hex");

const holders = new Map(); // public key (base64) -> Set of sockets
const pending = new Map(); // request id -> {key, message, sockets, done}
const keyObjects = new Map(); // public key (base64) -> KeyObject, for keys with connections

function keyObject(b64) {
  let k = keyObjects.get(b64);
  if (!k) {
    const raw = Buffer.from(b64, "base64");
    if (raw.length !== 32) return null;
    try {
      k = createPublicKey({ key: Buffer.concat([spkiPrefix, raw]), format: "der", type: "spki" });
    } catch {
      return null;
    }
  }
  return k;
}

function reply(res, status, body) {
  const b = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(b) });
  res.end(b);
}

const server = createServer((req, res) => {
  if (req.method === "GET" && (req.url === "/readyz" || req.url === "/healthz")) return reply(res, 200, { status: "ok" });
  if (req.method !== "POST" || req.url !== "/sign") return reply(res, 404, { error: { code: "not_found", message: "not found" } });
  if (req.headers.authorization !== auth) return reply(res, 401, { error: { code: "unauthorized", message: "bad API key" } });
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > 128 << 10) req.destroy();
    else chunks.push(c);
  });
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks));
    } catch {
      return reply(res, 400, { error: { code: "invalid_request", message: "body is not JSON" } });
    }
    const { public_key: key, message } = body;
    const timeout = Math.min(Number(body.timeout_ms) || 30000, 60000);
    if (typeof key !== "string" || typeof message !== "string" || !keyObject(key))
      return reply(res, 400, { error: { code: "invalid_request", message: "public_key and message are required" } });
    const sockets = holders.get(key);
    if (!sockets || sockets.size === 0) return reply(res, 404, { error: { code: "not_connected", message: "no key holder is connected" } });
    const id = randomUUID();
    const expires = new Date(Date.now() + timeout).toISOString();
    const frame = JSON.stringify({ type: "sign_request", request_id: id, public_key: key, message, description: "", expires_at: expires, requester: "" });
    const p = { key, message: Buffer.from(message, "base64"), sockets: new Set(sockets), done: null };
    const timer = setTimeout(() => p.done(null, "timeout"), timeout);
    p.done = (sig, why) => {
      clearTimeout(timer);
      pending.delete(id);
      for (const s of p.sockets) if (s !== p.winner) s.send(JSON.stringify({ type: "sign_cancel", request_id: id, reason: why || "answered_elsewhere" }));
      if (sig) reply(res, 200, { request_id: id, signature: sig });
      else reply(res, 504, { error: { code: "timeout", message: "no answer before the deadline" }, request_id: id });
    };
    pending.set(id, p);
    res.on("close", () => pending.has(id) && p.done(null, "requester_gone"));
    for (const s of sockets) s.send(frame);
  });
});

const wss = new WebSocketServer({ noServer: true, maxPayload: 256 << 10 });
server.on("upgrade", (req, sock, head) => {
  if (req.url !== "/ws") return sock.destroy();
  wss.handleUpgrade(req, sock, head, (ws) => holderConnected(ws));
});

function holderConnected(ws) {
  const nonce = randomBytes(32);
  let key = null;
  const introTimer = setTimeout(() => ws.close(4401, "introduction failed"), 10000);
  ws.send(JSON.stringify({ type: "challenge", nonce: nonce.toString("base64") }));
  ws.on("message", (data) => {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return ws.send(JSON.stringify({ type: "error", code: "invalid_frame", message: "not JSON" }));
    }
    if (key === null) {
      const k = f.type === "introduction" && typeof f.public_key === "string" ? keyObject(f.public_key) : null;
      if (!k || !verify(null, Buffer.concat([introContext, nonce]), k, Buffer.from(String(f.signature), "base64"))) {
        ws.send(JSON.stringify({ type: "error", code: "introduction_failed", message: "bad introduction" }));
        return ws.close(4401, "introduction failed");
      }
      clearTimeout(introTimer);
      key = f.public_key;
      keyObjects.set(key, k);
      if (!holders.has(key)) holders.set(key, new Set());
      holders.get(key).add(ws);
      return ws.send(JSON.stringify({ type: "introduced", public_key: key, session_id: randomUUID() }));
    }
    if (f.type !== "sign_response" && f.type !== "sign_reject") return;
    const p = pending.get(f.request_id);
    if (!p || !p.sockets.has(ws)) return ws.send(JSON.stringify({ type: "error", code: "unknown_request", message: "no such request", request_id: f.request_id }));
    if (f.type === "sign_reject") return;
    const sig = Buffer.from(String(f.signature), "base64");
    if (sig.length !== 64 || !verify(null, p.message, keyObjects.get(p.key), sig))
      return ws.send(JSON.stringify({ type: "error", code: "invalid_signature", message: "signature does not verify", request_id: f.request_id }));
    p.winner = ws;
    p.done(f.signature);
  });
  ws.on("close", () => {
    clearTimeout(introTimer);
    const set = key && holders.get(key);
    if (set) {
      set.delete(ws);
      if (set.size === 0) {
        holders.delete(key);
        keyObjects.delete(key);
      }
    }
  });
}

// Pings every 30 s, as the Go relay's default websocket.ping_interval.
setInterval(() => {
  for (const ws of wss.clients) ws.ping();
}, 30000).unref();

server.listen(port, host, () => console.error(`node relay on ${host}:${port}`));
process.on("SIGTERM", () => process.exit(0));
