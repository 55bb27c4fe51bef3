// Keeps the key holder's CryptoKeyPair in IndexedDB.
//
// A CryptoKey is structured-cloneable, so IndexedDB stores the key object
// itself; a non-extractable private key stays non-extractable after a reload
// and its bytes are never visible to script. Kept apart from relay-client.js
// because Node has no IndexedDB.

const DB_NAME = "signrelay";
const DB_VERSION = 1;
const STORE = "keys";
const SLOT = "default";

/** Whether IndexedDB can be used at all (it is missing or disabled in some private modes). */
export function keystoreAvailable() {
  return typeof indexedDB !== "undefined" && indexedDB !== null;
}

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new Error("key store is blocked by another tab"));
  });
}

/** Runs `work(store)` in one transaction and resolves when it has committed. */
async function withStore(mode, work) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      let result;
      Promise.resolve(work(tx.objectStore(STORE))).then((r) => (result = r), reject);
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error || new Error("key store transaction aborted"));
    });
  } finally {
    db.close();
  }
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/**
 * @typedef {{keyPair: CryptoKeyPair, createdAt: Date}} StoredKey
 */

/** @returns {Promise<StoredKey | null>} */
export async function loadKey() {
  const entry = await withStore("readonly", (store) => request(store.get(SLOT)));
  return entry && entry.keyPair ? entry : null;
}

/**
 * Returns the stored key, or stores `fresh` and returns it when there is none.
 * The check and the write share one transaction, so two tabs opened at once
 * on first visit end up with the same key rather than each with its own.
 * @param {CryptoKeyPair} fresh generated beforehand: no await on anything but
 *   IndexedDB may happen inside a transaction, or it commits early
 * @returns {Promise<StoredKey>}
 */
export function loadOrStoreKey(fresh) {
  return withStore("readwrite", async (store) => {
    const existing = await request(store.get(SLOT));
    if (existing && existing.keyPair) return existing;
    const entry = { keyPair: fresh, createdAt: new Date() };
    await request(store.put(entry, SLOT));
    return entry;
  });
}

/** Replaces the stored key. @returns {Promise<StoredKey>} */
export function replaceKey(keyPair) {
  const entry = { keyPair, createdAt: new Date() };
  return withStore("readwrite", (store) => request(store.put(entry, SLOT))).then(() => entry);
}

/** Deletes the stored key; it cannot be recovered. */
export function forgetKey() {
  return withStore("readwrite", (store) => request(store.delete(SLOT)));
}
