//! Files: upload (streamed in chunks, several in flight) and download (by ranges), and
//! messages that carry them.

use super::{Client, ClientError, Req, Resp, Result, expect_ack, new_client_msg_id, unexpected};
use chat_protocol::v1::{self, ClientFrame, ErrorCode};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

/// Chunks of one upload in flight at once.
const WINDOW: usize = 8;
/// What the client reads of a file at once when hashing it.
const READ_BYTES: usize = 256 * 1024;

/// The lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size and lowercase hex SHA-256 of a file, read in pieces.
pub async fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok((size, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// A MIME type guessed from a file name's extension (`application/octet-stream` when
/// unknown).
pub fn mime_of(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" | "md" => "text/plain",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

impl Client {
    /// Sends a request without waiting: the answer comes on the receiver.
    async fn start_request(&self, body: Req) -> Result<oneshot::Receiver<Resp>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("lock").insert(id, tx);
        let frame = ClientFrame {
            request_id: id,
            body: Some(body),
        };
        if self.closed.load(Ordering::SeqCst) || self.out.send(frame).await.is_err() {
            self.pending.lock().expect("lock").remove(&id);
            return Err(ClientError::Closed);
        }
        Ok(rx)
    }

    /// The answer of a request sent with [`Client::start_request`].
    async fn answer(&self, rx: oneshot::Receiver<Resp>) -> Result<Resp> {
        let answer = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::Timeout(self.timeout)),
        };
        match answer {
            Resp::Error(e) => Err(ClientError::Server {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                message: e.message,
                retry_after_ms: e.retry_after_ms,
            }),
            other => Ok(other),
        }
    }

    /// Announces an upload; with `stored` in the answer, nothing needs to be sent.
    pub async fn upload_begin(
        &self,
        name: &str,
        mime: &str,
        size: u64,
        sha256: &str,
    ) -> Result<v1::UploadReady> {
        match self
            .request(Req::UploadBegin(v1::UploadBegin {
                name: name.into(),
                mime: mime.into(),
                size,
                sha256: sha256.into(),
            }))
            .await?
        {
            Resp::UploadReady(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Sends bytes of an upload at `offset`; answers how many bytes the server has.
    pub async fn upload_chunk(&self, blob_id: &str, offset: u64, data: Vec<u8>) -> Result<u64> {
        let rx = self.start_request(chunk(blob_id, offset, data)).await?;
        progress(self.answer(rx).await?)
    }

    /// Ends an upload; answered once the file is durable.
    pub async fn upload_finish(&self, blob_id: &str) -> Result<v1::Attachment> {
        let finish = Req::UploadFinish(v1::UploadFinish {
            blob_id: blob_id.into(),
        });
        // Storing on the replicas of a large file takes longer than a message.
        let rx = self.start_request(finish).await?;
        let answer = tokio::time::timeout(self.timeout * 6, rx).await;
        let resp = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::Timeout(self.timeout * 6)),
        };
        match resp {
            Resp::UploadDone(d) => d
                .attachment
                .ok_or_else(|| ClientError::Unexpected("UploadDone without an attachment".into())),
            Resp::Error(e) => Err(ClientError::Server {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                message: e.message,
                retry_after_ms: e.retry_after_ms,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Uploads bytes held in memory (small files and tests).
    pub async fn upload_bytes(&self, name: &str, mime: &str, data: &[u8]) -> Result<v1::Attachment> {
        let ready = self
            .upload_begin(name, mime, data.len() as u64, &sha256_hex(data))
            .await?;
        if ready.stored {
            return ready
                .attachment
                .ok_or_else(|| ClientError::Unexpected("stored without an attachment".into()));
        }
        let step = ready.chunk_bytes.max(1) as usize;
        let mut offset = 0usize;
        let mut waiting = std::collections::VecDeque::new();
        while offset < data.len() {
            let end = (offset + step).min(data.len());
            let piece = data[offset..end].to_vec();
            waiting.push_back(
                self.start_request(chunk(&ready.blob_id, offset as u64, piece))
                    .await?,
            );
            offset = end;
            if waiting.len() >= WINDOW {
                progress(self.answer(waiting.pop_front().expect("not empty")).await?)?;
            }
        }
        while let Some(rx) = waiting.pop_front() {
            progress(self.answer(rx).await?)?;
        }
        self.upload_finish(&ready.blob_id).await
    }

    /// Uploads a file from disk, streamed (the file is read twice: once to hash it,
    /// once to send it); `name` and `mime` default to the file's name and a guess.
    pub async fn upload_file(&self, path: &Path, mime: Option<&str>) -> Result<v1::Attachment> {
        let (size, sha256) = hash_file(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mime = mime.unwrap_or_else(|| mime_of(&name));
        let ready = self.upload_begin(&name, mime, size, &sha256).await?;
        if ready.stored {
            return ready
                .attachment
                .ok_or_else(|| ClientError::Unexpected("stored without an attachment".into()));
        }
        let mut file = tokio::fs::File::open(path).await?;
        let step = ready.chunk_bytes.max(1) as usize;
        let mut offset = 0u64;
        let mut waiting = std::collections::VecDeque::new();
        loop {
            let mut piece = vec![0u8; step];
            let mut filled = 0;
            while filled < step {
                let n = file.read(&mut piece[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            piece.truncate(filled);
            waiting.push_back(self.start_request(chunk(&ready.blob_id, offset, piece)).await?);
            offset += filled as u64;
            if waiting.len() >= WINDOW {
                progress(self.answer(waiting.pop_front().expect("not empty")).await?)?;
            }
        }
        while let Some(rx) = waiting.pop_front() {
            progress(self.answer(rx).await?)?;
        }
        self.upload_finish(&ready.blob_id).await
    }

    /// Up to `length` bytes (0: what fits a frame) of a file from `offset`.
    pub async fn download_chunk(&self, blob_id: &str, offset: u64, length: u32) -> Result<v1::BlobChunk> {
        let rx = self
            .start_request(Req::Download(v1::DownloadRequest {
                blob_id: blob_id.into(),
                offset,
                length,
            }))
            .await?;
        match self.answer(rx).await? {
            Resp::BlobChunk(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Writes a file from `offset` to its end into `out` (several chunks in flight);
    /// answers the file's size.
    pub async fn download_to<W: AsyncWrite + Unpin>(
        &self,
        blob_id: &str,
        offset: u64,
        out: &mut W,
    ) -> Result<u64> {
        let first = self.download_chunk(blob_id, offset, 0).await?;
        let (size, step) = (first.size, first.data.len() as u64);
        out.write_all(&first.data).await?;
        let mut next = offset + step;
        if step == 0 {
            return Ok(size);
        }
        let mut waiting = std::collections::VecDeque::new();
        let mut asked = next;
        while next < size {
            while asked < size && waiting.len() < WINDOW {
                let req = Req::Download(v1::DownloadRequest {
                    blob_id: blob_id.into(),
                    offset: asked,
                    length: step as u32,
                });
                waiting.push_back(self.start_request(req).await?);
                asked += step;
            }
            let Some(rx) = waiting.pop_front() else { break };
            let chunk = match self.answer(rx).await? {
                Resp::BlobChunk(c) => c,
                other => return Err(unexpected(other)),
            };
            if chunk.offset != next || chunk.data.is_empty() {
                return Err(ClientError::Unexpected(format!(
                    "a chunk at {} ({} bytes), expected {next}",
                    chunk.offset,
                    chunk.data.len()
                )));
            }
            out.write_all(&chunk.data).await?;
            next += chunk.data.len() as u64;
        }
        out.flush().await?;
        Ok(size)
    }

    /// Downloads a file to `path`, resuming after what a partial file there holds.
    pub async fn download_file(&self, blob_id: &str, path: &Path) -> Result<u64> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let have = file.seek(std::io::SeekFrom::End(0)).await?;
        let done = self.download_to(blob_id, have, &mut file).await;
        if done.is_err() && have == 0 {
            // Refused before any byte came: leave no empty file behind.
            if tokio::fs::metadata(path).await.is_ok_and(|m| m.len() == 0) {
                let _ = tokio::fs::remove_file(path).await;
            }
        }
        done
    }

    /// Sends a private message carrying files (uploaded first).
    pub async fn send_private_files(
        &self,
        to: &str,
        text: &str,
        attachments: Vec<v1::Attachment>,
    ) -> Result<v1::SendAck> {
        expect_ack(
            self.request(Req::SendPrivate(v1::SendPrivate {
                to: to.into(),
                client_msg_id: new_client_msg_id(),
                text: text.into(),
                attachments,
                ..Default::default()
            }))
            .await?,
        )
    }

    /// Sends a group message carrying files (uploaded first).
    pub async fn send_group_files(
        &self,
        group: &str,
        text: &str,
        attachments: Vec<v1::Attachment>,
    ) -> Result<v1::SendAck> {
        expect_ack(
            self.request(Req::SendGroup(v1::SendGroup {
                group: group.into(),
                client_msg_id: new_client_msg_id(),
                text: text.into(),
                attachments,
                ..Default::default()
            }))
            .await?,
        )
    }
}

fn chunk(blob_id: &str, offset: u64, data: Vec<u8>) -> Req {
    Req::UploadChunk(v1::UploadChunk {
        blob_id: blob_id.into(),
        offset,
        data,
    })
}

fn progress(resp: Resp) -> Result<u64> {
    match resp {
        Resp::UploadProgress(p) => Ok(p.received),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_types() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(mime_of("Photo.JPG"), "image/jpeg");
        assert_eq!(mime_of("notes"), "application/octet-stream");
    }
}
