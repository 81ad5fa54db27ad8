// Unit tests of the page's files module (no DOM, no network): sizes in words, which
// attachments are images, chunk plans, reassembly, and uploads and downloads against
// a fake node that checks what the protocol requires (order, chunk size, the hash).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";

const { formatSize, isImage, mimeOf, slim, planChunks, assemble, hex, sha256Hex, upload, download, WINDOW } = await import("../src/files.js");

test("sizes read as people write them", () => {
  assert.equal(formatSize(0), "0 B");
  assert.equal(formatSize(1023), "1023 B");
  assert.equal(formatSize(1024), "1.0 KB");
  assert.equal(formatSize(1536), "1.5 KB");
  assert.equal(formatSize(20 * 1024), "20 KB");
  assert.equal(formatSize(1024 * 1024 - 1), "1.0 MB");
  assert.equal(formatSize(25 * 1024 * 1024), "25 MB");
  assert.equal(formatSize(3 * 1024 ** 3), "3.0 GB");
});

test("an attachment is an image when the server made a preview of it", () => {
  const thumb = new Uint8Array([0xff, 0xd8, 0xff]);
  assert.equal(isImage({ mime: "image/png", thumbnail: thumb }), true);
  // An image the server could not read (or whose preview did not fit) is a file to download.
  assert.equal(isImage({ mime: "image/png", thumbnail: new Uint8Array() }), false);
  assert.equal(isImage({ mime: "application/pdf", thumbnail: thumb }), false);
  assert.equal(isImage({ mime: "image/png" }), false);
});

test("a file's type is the browser's, else a guess from its name", () => {
  assert.equal(mimeOf("a.bin", "image/svg+xml"), "image/svg+xml");
  assert.equal(mimeOf("Photo.JPG"), "image/jpeg");
  assert.equal(mimeOf("notes"), "application/octet-stream");
  assert.deepEqual(slim({ blob_id: "ab", name: "n", mime: "m", size: 3, thumbnail: new Uint8Array(9) }), { blob_id: "ab", name: "n", mime: "m" });
});

test("chunks cover the file in order, none over the step", () => {
  assert.deepEqual(planChunks(10, 4), [
    { offset: 0, length: 4 },
    { offset: 4, length: 4 },
    { offset: 8, length: 2 },
  ]);
  assert.deepEqual(planChunks(8, 4, 4), [{ offset: 4, length: 4 }]);
  assert.deepEqual(planChunks(0, 4), []);
  assert.throws(() => planChunks(10, 0));
});

test("chunks are put back together in any order, and gaps or overlaps are refused", () => {
  const c = (offset, ...bytes) => ({ offset, data: new Uint8Array(bytes) });
  assert.deepEqual([...assemble(5, [c(3, 4, 5), c(0, 1, 2, 3)])], [1, 2, 3, 4, 5]);
  assert.throws(() => assemble(5, [c(0, 1, 2), c(3, 4, 5)]), /expected 2/);
  assert.throws(() => assemble(5, [c(0, 1, 2, 3), c(2, 3, 4, 5)]), /expected 3/);
  assert.throws(() => assemble(5, [c(0, 1, 2, 3)]), /3 of 5/);
  assert.throws(() => assemble(2, [c(0, 1, 2, 3)]));
});

test("the blob id is the lowercase hex SHA-256 of the bytes", async () => {
  assert.equal(await sha256Hex(new TextEncoder().encode("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  assert.equal(hex(new Uint8Array([0, 15, 255])), "000fff");
});

class Refused extends Error {
  constructor(code) {
    super(code);
    this.code = code;
  }
}

/** A node's side of the files protocol, in memory: it checks each chunk's order and
 * size and the hash at the end, answers after a turn of the event loop (so requests
 * overlap) and counts the most requests in flight. */
function fakeNode({ chunkBytes = 4, stored = new Map(), refuse = null } = {}) {
  const node = { stored, uploads: new Map(), inFlight: 0, most: 0, requests: [] };
  const answer = async (field, body) => {
    node.requests.push(field);
    if (refuse) throw new Refused(refuse);
    if (field === "upload_begin") {
      if (stored.has(body.sha256)) return { blob_id: body.sha256, stored: true, attachment: { blob_id: body.sha256, name: body.name, size: body.size } };
      node.uploads.set(body.sha256, { ...body, parts: [] });
      return { blob_id: body.sha256, stored: false, chunk_bytes: chunkBytes };
    }
    if (field === "upload_chunk") {
      const up = node.uploads.get(body.blob_id);
      const have = up.parts.reduce((n, p) => n + p.length, 0);
      if (body.offset !== have) throw new Refused("BAD_REQUEST");
      if (body.data.length > chunkBytes) throw new Refused("FRAME_TOO_LARGE");
      up.parts.push(Uint8Array.from(body.data));
      return { blob_id: body.blob_id, received: have + body.data.length };
    }
    if (field === "upload_finish") {
      const up = node.uploads.get(body.blob_id);
      const data = Buffer.concat(up.parts);
      if (data.length !== up.size || createHash("sha256").update(data).digest("hex") !== up.sha256) throw new Refused("HASH_MISMATCH");
      stored.set(up.sha256, data);
      return { attachment: { blob_id: up.sha256, name: up.name, mime: up.mime, size: data.length, sha256: up.sha256 } };
    }
    if (field === "download") {
      const data = stored.get(body.blob_id);
      if (!data) throw new Refused("NOT_FOUND");
      const length = body.length === 0 ? chunkBytes : Math.min(body.length, chunkBytes);
      return { blob_id: body.blob_id, offset: body.offset, data: data.subarray(body.offset, body.offset + length), size: data.length, mime: "x/y" };
    }
    throw new Refused("UNEXPECTED");
  };
  node.request = async (field, body) => {
    node.inFlight++;
    node.most = Math.max(node.most, node.inFlight);
    try {
      await new Promise((r) => setImmediate(r));
      return await answer(field, body);
    } finally {
      node.inFlight--;
    }
  };
  return node;
}

const bytes = (n) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 255);

test("an upload sends chunks in order with several in flight, and answers the attachment", async () => {
  const node = fakeNode({ chunkBytes: 4 });
  const data = bytes(50);
  const seen = [];
  const a = await upload(node.request, { name: "f.bin", mime: "application/octet-stream", data }, (sent, size) => seen.push([sent, size]));
  assert.equal(a.blob_id, createHash("sha256").update(data).digest("hex"));
  assert.equal(a.size, 50);
  assert.deepEqual(node.stored.get(a.blob_id), Buffer.from(data));
  assert.equal(node.requests.filter((r) => r === "upload_chunk").length, 13);
  assert.equal(node.most, WINDOW, "a window of chunks in flight, no more");
  assert.deepEqual(seen.at(-1), [50, 50]);
  assert.ok(seen.every(([s], i) => i === 0 || s >= seen[i - 1][0]), "progress only grows");
});

test("bytes the cluster has already are not sent again", async () => {
  const node = fakeNode();
  const data = bytes(9);
  node.stored.set(createHash("sha256").update(data).digest("hex"), Buffer.from(data));
  const a = await upload(node.request, { name: "again.bin", mime: "", data });
  assert.equal(a.name, "again.bin");
  assert.deepEqual(node.requests, ["upload_begin"]);
});

test("a refusal of the upload reaches the caller with its code", async () => {
  const node = fakeNode({ refuse: "FILE_TOO_LARGE" });
  await assert.rejects(upload(node.request, { name: "big", mime: "", data: bytes(3) }), (e) => e.code === "FILE_TOO_LARGE");
});

test("a download fetches every chunk, several in flight, and puts the file together", async () => {
  const node = fakeNode({ chunkBytes: 5 });
  const data = Buffer.from(bytes(61));
  node.stored.set("f", data);
  const seen = [];
  const got = await download(node.request, "f", (n, size) => seen.push([n, size]));
  assert.deepEqual(Buffer.from(got.data), data);
  assert.equal(got.size, 61);
  assert.equal(got.mime, "x/y");
  assert.equal(node.most, WINDOW);
  assert.deepEqual(seen.at(-1), [61, 61]);
  // An empty file is one empty chunk.
  node.stored.set("empty", Buffer.alloc(0));
  assert.equal((await download(node.request, "empty")).data.length, 0);
  await assert.rejects(download(node.request, "missing"), (e) => e.code === "NOT_FOUND");
});

test("a download refuses a chunk from the wrong place", async () => {
  const node = fakeNode({ chunkBytes: 4 });
  node.stored.set("f", Buffer.from(bytes(12)));
  const shifted = async (field, body) => {
    const c = await node.request(field, body);
    return body.offset === 8 ? { ...c, offset: 7 } : c;
  };
  await assert.rejects(download(shifted, "f"), /expected 8/);
});
