// Files (attachments) for the page, without the DOM: sizes in words, which files show
// as images, the chunks of an upload or a download and putting a download back
// together, and the two transfers themselves over any `request(field, body, timeoutMs)`
// (the session's, or a fake one in the unit tests). The protocol is the "files"
// section of protocol/chat.proto; client/src/files.rs is the reference client.

/** Chunks of one transfer in flight at once (as the Rust client). */
export const WINDOW = 8;
/** How long UploadFinish may take: storing a large file on the replicas takes longer
 * than a message. */
export const FINISH_TIMEOUT_MS = 90000;
/** The most files one message carries (SendPrivate.attachments). */
export const MAX_ATTACHMENTS = 8;

const UNITS = ["KB", "MB", "GB", "TB"];

/** A byte count for people: "0 B", "999 B", "1.5 KB", "12 MB" (1 KB = 1024 B; one
 * decimal below 10). */
export function formatSize(n) {
  let size = Number(n) || 0;
  if (size < 1024) return `${size} B`;
  let unit = -1;
  do {
    size /= 1024;
    unit++;
  } while (size >= 1024 && unit < UNITS.length - 1);
  // 1023.96 KB would round to "1024 KB": say "1.0 MB" instead.
  if (size >= 1023.95 && unit < UNITS.length - 1) {
    size /= 1024;
    unit++;
  }
  const shown = size < 10 ? size.toFixed(1) : String(Math.round(size));
  return `${shown} ${UNITS[unit]}`;
}

/** Whether an attachment shows as a picture: the server made a preview of it, which
 * it does for the images it could read. Anything else is a download link. */
export function isImage(a) {
  return Boolean(a?.thumbnail?.length) && String(a.mime ?? "").startsWith("image/");
}

/** A MIME type for a file: what the browser says, else a guess from the name's
 * extension (as client/src/files.rs guesses). */
export function mimeOf(name, browserType = "") {
  if (browserType) return browserType;
  const dot = name.lastIndexOf(".");
  const ext = dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
  const known = {
    png: "image/png",
    jpg: "image/jpeg",
    jpeg: "image/jpeg",
    gif: "image/gif",
    webp: "image/webp",
    txt: "text/plain",
    md: "text/plain",
    pdf: "application/pdf",
    zip: "application/zip",
    mp3: "audio/mpeg",
    mp4: "video/mp4",
  };
  return known[ext] ?? "application/octet-stream";
}

/** What a message carries when sent: only these are taken from the client (the
 * server fills in the rest from what it stored), and only these go to the outbox. */
export function slim(a) {
  return { blob_id: a.blob_id, name: a.name, mime: a.mime };
}

/** The pieces of `size` bytes from `from`, each at most `step` long, in order. */
export function planChunks(size, step, from = 0) {
  if (!(step > 0)) throw new Error("the chunk size must be positive");
  const out = [];
  for (let offset = from; offset < size; offset += step) out.push({ offset, length: Math.min(step, size - offset) });
  return out;
}

/** The whole file from chunks ({offset, data}) in any order; throws unless they
 * cover `size` bytes exactly, without gaps or overlaps (an empty chunk adds nothing). */
export function assemble(size, chunks) {
  const out = new Uint8Array(size);
  let next = 0;
  for (const c of [...chunks].sort((a, b) => a.offset - b.offset)) {
    if (c.offset !== next) throw new Error(`a chunk at ${c.offset}, expected ${next}`);
    if (next + c.data.length > size) throw new Error(`a chunk of ${c.data.length} bytes at ${c.offset} of ${size}`);
    out.set(c.data, next);
    next += c.data.length;
  }
  if (next !== size) throw new Error(`${next} of ${size} bytes`);
  return out;
}

/** Lowercase hex of bytes. */
export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The blob id of `data`: the lowercase hex SHA-256 of its bytes. */
export async function sha256Hex(data) {
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", data)));
}

/** Runs `start(item)` for each item with at most `window` in flight, in order;
 * `done(result, item)` sees each answer in order of the items. Stops at the first
 * failure (the ones in flight are left to settle, their answers ignored). */
async function windowed(items, window, start, done) {
  const waiting = [];
  for (const item of items) {
    const p = start(item);
    p.catch(() => {}); // awaited below, in order; not an unhandled rejection meanwhile
    waiting.push([p, item]);
    if (waiting.length >= window) {
      const [q, it] = waiting.shift();
      done(await q, it);
    }
  }
  while (waiting.length) {
    const [q, it] = waiting.shift();
    done(await q, it);
  }
}

/** Uploads `data` (a Uint8Array) as `name` of type `mime`: UploadBegin, then (unless
 * the cluster has these bytes already) UploadChunk frames of at most the node's
 * chunk_bytes with `window` in flight, then UploadFinish. `progress(sent, size)` is
 * called as the node confirms bytes. Answers the Attachment to put on a message;
 * throws the server's refusal (FILE_TOO_LARGE, QUOTA_EXCEEDED, HASH_MISMATCH...). */
export async function upload(request, { name, mime, data }, progress = () => {}, window = WINDOW) {
  const size = data.length;
  const sha256 = await sha256Hex(data);
  const ready = await request("upload_begin", { name, mime, size, sha256 });
  if (ready.stored) {
    progress(size, size);
    return ready.attachment;
  }
  const blob_id = ready.blob_id || sha256;
  const step = Math.max(1, ready.chunk_bytes || 0);
  progress(0, size);
  await windowed(
    planChunks(size, step),
    window,
    ({ offset, length }) => request("upload_chunk", { blob_id, offset, data: data.subarray(offset, offset + length) }),
    (answer, { offset, length }) => progress(Math.max(answer.received ?? 0, offset + length), size),
  );
  const done = await request("upload_finish", { blob_id }, FINISH_TIMEOUT_MS);
  if (!done.attachment) throw new Error("the server answered the upload without an attachment");
  return done.attachment;
}

/** Downloads file `blobId` by DownloadRequest chunks (the first one tells the size
 * and the node's chunk size; then `window` in flight). `progress(got, size)` follows.
 * Answers { data: Uint8Array, size, mime }. */
export async function download(request, blobId, progress = () => {}, window = WINDOW) {
  const first = await request("download", { blob_id: blobId, offset: 0, length: 0 });
  const size = first.size;
  const step = first.data.length;
  const chunks = [{ offset: 0, data: first.data }];
  let got = step;
  progress(got, size);
  if (size > 0 && step === 0) throw new Error("the server sent an empty chunk of a file that is not empty");
  if (step > 0) {
    await windowed(
      planChunks(size, step, step),
      window,
      ({ offset, length }) => request("download", { blob_id: blobId, offset, length }),
      (chunk, { offset }) => {
        if (chunk.offset !== offset) throw new Error(`a chunk at ${chunk.offset}, expected ${offset}`);
        chunks.push({ offset: chunk.offset, data: chunk.data });
        got += chunk.data.length;
        progress(got, size);
      },
    );
  }
  return { data: assemble(size, chunks), size, mime: first.mime };
}
