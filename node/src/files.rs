//! Files (attachments): uploads streamed to disk, stored on a majority of their
//! partition's replicas before they are acknowledged, and read back by whoever may.
//!
//! A file is named by its SHA-256 (`chat_state::blobs`). Its bytes are a file in the
//! node's `files/` folder; its record (size, type, preview, holders, readers) is in
//! the partition of its hash, decided through that partition's Raft group like any
//! other record. The bytes themselves do not go through the Raft log (a 25 MiB file in
//! the log would sit in every replica's memory until compaction): the node that takes
//! an upload keeps it on disk, asks each of the partition's voters to fetch it
//! (`BlobFetch`, answered once the copy is verified and synced), and proposes the
//! record only once a majority holds it. Content addressing makes a copy checkable
//! anywhere: a fetched file whose hash differs is dropped.
//!
//! What is promised: an answered upload is on the disks of a majority of its
//! partition's voters, and its record is committed; a voter that lacks the bytes
//! (it was down, or joined later) fetches them from the others when it serves them.

use crate::config::FilesConfig;
use crate::consensus::disk::Disk;
use crate::error::{ChatError, ChatResult};
use crate::remote::Remote;
use crate::view::ClusterView;
use chat_protocol::internal::answer::A;
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::query::{GroupAsk, Q, UploadUsage};
use chat_protocol::internal::{
    BlobData, BlobFetch, BlobRead, BlobRecord, Request, outcome, request, response,
};
use chat_protocol::v1::{Attachment, UploadBegin};
use chat_state::blobs::{self, Access};
use chat_state::placement;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Most attachments one message carries.
pub const MAX_ATTACHMENTS: usize = 8;
/// Longest file name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest MIME type, in bytes.
pub const MAX_MIME_BYTES: usize = 127;
/// Bytes one `BlobRead` between nodes carries.
const PEER_CHUNK: u32 = 1 << 20;
/// An upload that gets no bytes for this long is dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(300);
/// How long an upload token for HTTP is good for.
const TOKEN_TTL: Duration = Duration::from_secs(600);
/// Most upload tokens a node keeps (older ones are dropped first).
const MAX_TOKENS: usize = 10_000;
/// Largest side of a preview, in pixels.
const THUMB_SIDE: u32 = 320;
/// Largest preview, in bytes (it travels in every delivery of the message).
const THUMB_MAX_BYTES: usize = 24 * 1024;
/// Images larger than this (pixels on a side) get no preview: decoding them would
/// take too much memory.
const THUMB_MAX_SOURCE_SIDE: u32 = 12_000;
/// A file here with no record of it in a partition this node holds is removed once
/// it is older than this (a copy taken for an upload that failed, or an uploader's
/// copy of a partition held elsewhere).
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// An upload announced and accepted: what its bytes must be.
#[derive(Debug, Clone)]
pub struct Announced {
    pub user: String,
    pub id: String,
    pub hash: [u8; 32],
    pub size: u64,
    pub name: String,
    pub mime: String,
    expires: tokio::time::Instant,
}

/// What an `UploadBegin` leads to.
#[derive(Debug)]
pub enum Begun {
    /// The cluster has these bytes: ready to attach.
    Stored(Attachment),
    /// Send the bytes (over the connection, or by HTTP with the token).
    Send { announced: Announced, token: String },
}

/// This node's files.
pub struct Files {
    dir: PathBuf,
    tmp: PathBuf,
    me: String,
    cfg: FilesConfig,
    remote: Arc<Remote>,
    consensus: crate::consensus::driver::Handle,
    view: ClusterView,
    records: Disk,
    tokens: Mutex<HashMap<String, Announced>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Files {
    /// Opens `files/` in the data folder (removing uploads a crash cut short), serves
    /// peers' requests for files, and runs retention.
    pub fn start(
        config: &crate::config::Config,
        me: &str,
        remote: Arc<Remote>,
        consensus: crate::consensus::driver::Handle,
        view: ClusterView,
        records: Disk,
    ) -> std::io::Result<Arc<Self>> {
        let cfg = config.files.clone();
        let sweep_every = Duration::from_secs(cfg.check_every_secs.max(1));
        let dir = config.data_dir.join("files");
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let files = Arc::new(Self {
            dir,
            tmp,
            me: me.to_owned(),
            cfg,
            remote: remote.clone(),
            consensus,
            view,
            records,
            tokens: Mutex::default(),
        });
        let weak = Arc::downgrade(&files);
        remote.on_file_request(Box::new(move |req| {
            if let Some(files) = weak.upgrade() {
                files.serve_peer(req);
            }
        }));
        tokio::spawn(sweep(Arc::downgrade(&files), sweep_every));
        Ok(files)
    }

    /// The largest file this node takes.
    pub fn max_file_bytes(&self) -> u64 {
        self.cfg.max_file_bytes
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    // ---- uploads ----------------------------------------------------------------

    /// Checks an announced upload: the cluster may have its bytes already (then `user`
    /// becomes a reader and nothing is sent), else it must fit the limits.
    pub async fn begin(&self, user: &str, b: UploadBegin) -> ChatResult<Begun> {
        let hash = blobs::parse_id(&b.sha256)
            .ok_or_else(|| ChatError::BadRequest("sha256 must be 64 lowercase hex digits".into()))?;
        check_meta(&b.name, &b.mime)?;
        if b.size > self.cfg.max_file_bytes {
            return Err(ChatError::FileTooLarge(self.cfg.max_file_bytes));
        }
        let claim = Op::StoreBlob(command::StoreBlob {
            blob: b.sha256.clone(),
            user: user.to_owned(),
            now_ms: crate::storage::now_ms(),
            ..Default::default()
        });
        match self.propose(placement::of_blob(&hash), claim).await? {
            outcome::Result::Blob(record) => {
                return Ok(Begun::Stored(attachment(&b.sha256, &b.name, &b.mime, &record)));
            }
            outcome::Result::NotFound(_) => {}
            outcome::Result::NotAllowed(_) => return Err(shared_too_widely()),
            other => return Err(unexpected(other)),
        }
        if self.cfg.quota_bytes > 0 {
            let used = self
                .read(
                    placement::of_user(user),
                    Q::UploadUsage(UploadUsage {
                        user: user.to_owned(),
                        now_ms: crate::storage::now_ms(),
                        window_ms: self.window_ms(),
                    }),
                )
                .await?;
            let A::Usage(used) = used else {
                return Err(ChatError::Internal(format!("usage answered {used:?}")));
            };
            if used.saturating_add(b.size) > self.cfg.quota_bytes {
                return Err(ChatError::QuotaExceeded(self.cfg.quota_bytes));
            }
        }
        let announced = Announced {
            user: user.to_owned(),
            id: b.sha256,
            hash,
            size: b.size,
            name: b.name,
            mime: b.mime,
            expires: tokio::time::Instant::now() + TOKEN_TTL,
        };
        let token = crate::auth::new_token();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        tokens.retain(|_, a| a.expires > now);
        if tokens.len() >= MAX_TOKENS {
            let oldest = tokens
                .iter()
                .min_by_key(|(_, a)| a.expires)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(token.clone(), announced.clone());
        Ok(Begun::Send { announced, token })
    }

    /// The upload an HTTP upload token stands for (once: the token is used up).
    pub fn take_token(&self, token: &str, id: &str) -> Option<Announced> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let found = tokens.get(token)?;
        if found.id != id || found.expires <= tokio::time::Instant::now() {
            return None;
        }
        tokens.remove(token)
    }

    /// Records a file this node holds complete on disk once a majority of its
    /// partition's voters do, counts it against its uploader's quota, and answers what
    /// to attach.
    async fn commit(&self, a: &Announced) -> ChatResult<Attachment> {
        let path = self.path(&a.id);
        let mime = a.mime.clone();
        let preview = tokio::task::spawn_blocking(move || thumbnail(&path, &mime))
            .await
            .unwrap_or(None);
        let holders = self.replicate(&a.id, a.hash, a.size).await?;
        let (width, height, thumbnail) = preview.unwrap_or_default();
        let now_ms = crate::storage::now_ms();
        let store = Op::StoreBlob(command::StoreBlob {
            blob: a.id.clone(),
            size: a.size,
            mime: a.mime.clone(),
            width,
            height,
            thumbnail,
            holders,
            user: a.user.clone(),
            now_ms,
        });
        let record = match self.propose(placement::of_blob(&a.hash), store).await? {
            outcome::Result::Blob(record) => record,
            outcome::Result::NotAllowed(_) => return Err(shared_too_widely()),
            other => return Err(unexpected(other)),
        };
        let charge = Op::ChargeUpload(command::ChargeUpload {
            user: a.user.clone(),
            blob: a.id.clone(),
            size: a.size,
            now_ms,
            window_ms: self.window_ms(),
        });
        if let Err(e) = self.propose(placement::of_user(&a.user), charge).await {
            // The file is stored and recorded: the upload succeeded. Only the quota
            // misses it (it is a limit of abuse, not of accounting).
            tracing::warn!(user = %a.user, blob = %a.id, error = %e, "upload not counted against the quota");
        }
        Ok(attachment(&a.id, &a.name, &a.mime, &record))
    }

    /// How long a file no message carries is kept (and uploads count against the
    /// quota), in milliseconds; `u64::MAX`: for ever.
    fn window_ms(&self) -> u64 {
        if self.cfg.retention_days > 0.0 {
            // A float to integer cast saturates.
            (self.cfg.retention_days * 86_400_000.0).max(1.0) as u64
        } else {
            u64::MAX
        }
    }

    /// How old a file here with no record must be before it is removed: an hour (a
    /// copy whose record is on its way), or the retention window if shorter.
    fn orphan_age(&self) -> Duration {
        ORPHAN_AGE.min(Duration::from_millis(self.window_ms()))
    }

    /// Has each voter of the file's partition fetch it from here; the voters that hold
    /// it on disk, once they are a majority.
    async fn replicate(&self, id: &str, hash: [u8; 32], size: u64) -> ChatResult<Vec<String>> {
        let voters = self.voters(placement::of_blob(&hash));
        if voters.is_empty() {
            return Err(ChatError::Unavailable(
                "the file's partition has no known replicas yet".into(),
            ));
        }
        // A slow link gets time in proportion to the size (at least 5 MB/s).
        let timeout = crate::remote::REQUEST_TIMEOUT + Duration::from_millis(size / 5_000);
        let asks = voters.iter().map(|voter| {
            let voter = voter.clone();
            async move {
                if voter == self.me {
                    return Some(voter);
                }
                let op = request::Op::BlobFetch(BlobFetch {
                    blob: id.to_owned(),
                    size,
                    from: vec![self.me.clone()],
                });
                match self.ask(&voter, op, timeout).await {
                    Ok(_) => Some(voter),
                    Err(e) => {
                        tracing::info!(peer = %voter, blob = id, error = %e, "a replica could not take a file");
                        None
                    }
                }
            }
        });
        let holders: Vec<String> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if holders.len() * 2 <= voters.len() {
            return Err(ChatError::Unavailable(format!(
                "the file reached {} of {} replicas, not a majority: try again",
                holders.len(),
                voters.len()
            )));
        }
        Ok(holders)
    }

    /// The names of the nodes placement puts partition `p` on.
    fn voters(&self, p: placement::Partition) -> Vec<String> {
        let ids = self.consensus.placed(p);
        let mut names: Vec<String> = self
            .view
            .peers()
            .into_iter()
            .map(|peer| peer.card.name)
            .chain([self.me.clone()])
            .filter(|n| ids.contains(&crate::consensus::node_id(n)))
            .collect();
        names.dedup();
        names
    }

    // ---- reading ------------------------------------------------------------------

    /// The record of file `id` if `user` may read it; NOT_FOUND otherwise, the same as
    /// for a file that does not exist.
    pub async fn may_read(&self, user: &str, id: &str) -> ChatResult<BlobRecord> {
        let hash = blobs::parse_id(id).ok_or_else(|| no_file(id))?;
        let record = match self
            .read(placement::of_blob(&hash), Q::Blob(id.to_owned()))
            .await?
        {
            A::Blob(record) => record,
            A::NotFound(_) => return Err(no_file(id)),
            other => return Err(ChatError::Internal(format!("a file's record answered {other:?}"))),
        };
        match blobs::access(&record, user) {
            Access::Reader => Ok(record),
            Access::IfMemberOf(groups) => {
                for group in groups {
                    let ask = Q::Members(GroupAsk {
                        group: group.clone(),
                        user: user.to_owned(),
                        ..Default::default()
                    });
                    if let Ok(A::Names(_)) = self.read(placement::of_group(&group), ask).await {
                        return Ok(record);
                    }
                }
                Err(no_file(id))
            }
        }
    }

    /// Up to `len` bytes of file `id` from `offset`: from this node's copy, else from
    /// a node that holds one (this node then fetches its own copy when it should hold
    /// one).
    pub async fn read_range(
        &self,
        id: &str,
        record: &BlobRecord,
        offset: u64,
        len: u32,
    ) -> ChatResult<Vec<u8>> {
        if offset >= record.size {
            return Ok(Vec::new());
        }
        let len = u64::from(len).min(record.size - offset) as usize;
        let path = self.path(id);
        if let Ok(Ok(Some(data))) = tokio::task::spawn_blocking(move || read_local(&path, offset, len)).await
        {
            return Ok(data);
        }
        let mut last = no_file(id);
        for node in self.sources(id, record) {
            let op = request::Op::BlobRead(BlobRead {
                blob: id.to_owned(),
                offset,
                length: len as u32,
            });
            match self.ask(&node, op, crate::remote::REQUEST_TIMEOUT).await {
                Ok(response::Result::BlobData(d)) => return Ok(d.data),
                Ok(other) => last = ChatError::Internal(format!("a peer answered a read with {other:?}")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Where to fetch file `id` from: its holders, then its partition's voters.
    fn sources(&self, id: &str, record: &BlobRecord) -> Vec<String> {
        let mut nodes = record.holders.clone();
        if let Some(hash) = blobs::parse_id(id) {
            nodes.extend(self.voters(placement::of_blob(&hash)));
        }
        let mut seen = std::collections::HashSet::new();
        nodes.retain(|n| *n != self.me && seen.insert(n.clone()));
        nodes
    }

    /// Lets the readers of a message read the files it carries (each must exist and be
    /// readable by `sender`), and answers them as the message will carry them.
    pub async fn attach(
        &self,
        sender: &str,
        asked: Vec<Attachment>,
        users: Vec<String>,
        groups: Vec<String>,
    ) -> ChatResult<Vec<Attachment>> {
        if asked.len() > MAX_ATTACHMENTS {
            return Err(ChatError::BadRequest(format!(
                "at most {MAX_ATTACHMENTS} attachments per message"
            )));
        }
        for a in &asked {
            check_meta(&a.name, &a.mime)?;
        }
        let mut out = Vec::with_capacity(asked.len());
        let mut preview_bytes = 0usize;
        for a in asked {
            let hash = blobs::parse_id(&a.blob_id).ok_or_else(|| no_file(&a.blob_id))?;
            self.may_read(sender, &a.blob_id).await?;
            let grant = Op::GrantBlob(command::GrantBlob {
                blob: a.blob_id.clone(),
                users: users.clone(),
                groups: groups.clone(),
                now_ms: crate::storage::now_ms(),
            });
            let record = match self.propose(placement::of_blob(&hash), grant).await? {
                outcome::Result::Blob(record) => record,
                outcome::Result::NotFound(_) => return Err(no_file(&a.blob_id)),
                outcome::Result::NotAllowed(_) => return Err(shared_too_widely()),
                other => return Err(unexpected(other)),
            };
            let mut full = attachment(&a.blob_id, &a.name, &a.mime, &record);
            // Previews of one message stay small enough for any frame.
            preview_bytes += full.thumbnail.len();
            if preview_bytes > THUMB_MAX_BYTES * 2 {
                full.thumbnail.clear();
            }
            out.push(full);
        }
        Ok(out)
    }

    // ---- between nodes ------------------------------------------------------------

    fn serve_peer(self: &Arc<Self>, req: Request) {
        let me = self.clone();
        let (origin, id) = (req.origin.clone(), req.id);
        tokio::spawn(async move {
            let result = match req.op {
                Some(request::Op::BlobRead(r)) => me.serve_read(r).await.map(response::Result::BlobData),
                Some(request::Op::BlobFetch(f)) => me
                    .fetch(&f.blob, f.size, &f.from)
                    .await
                    .map(|()| response::Result::Done(Default::default())),
                _ => Err(ChatError::BadRequest("not a request for files".into())),
            };
            let result = result.unwrap_or_else(|e| response::Result::Error(e.to_proto()));
            me.remote.respond(&origin, id, result);
        });
    }

    async fn serve_read(&self, r: BlobRead) -> ChatResult<BlobData> {
        blobs::parse_id(&r.blob).ok_or_else(|| no_file(&r.blob))?;
        let path = self.path(&r.blob);
        let len = r.length.min(PEER_CHUNK) as usize;
        let offset = r.offset;
        tokio::task::spawn_blocking(move || -> ChatResult<BlobData> {
            let size = std::fs::metadata(&path).map_err(|_| no_file(""))?.len();
            let data = read_local(&path, offset, len).map_err(|e| ChatError::Internal(e.to_string()))?;
            Ok(BlobData {
                data: data.unwrap_or_default(),
                size,
            })
        })
        .await
        .map_err(|e| ChatError::Internal(e.to_string()))?
    }

    /// Makes sure this node holds file `id` on disk: fetched from one of `from` (in
    /// order), checked against its hash, synced, and only then in `files/`.
    async fn fetch(&self, id: &str, size: u64, from: &[String]) -> ChatResult<()> {
        let hash = blobs::parse_id(id).ok_or_else(|| no_file(id))?;
        if self.holds(id, size).await {
            return Ok(());
        }
        let mut last = no_file(id);
        for node in from.iter().filter(|n| **n != self.me) {
            match self.fetch_from(node, id, hash, size).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn fetch_from(&self, node: &str, id: &str, hash: [u8; 32], size: u64) -> ChatResult<()> {
        let mut file = TempFile::create(&self.tmp).await?;
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        while offset < size {
            let op = request::Op::BlobRead(BlobRead {
                blob: id.to_owned(),
                offset,
                length: PEER_CHUNK,
            });
            let data = match self.ask(node, op, crate::remote::REQUEST_TIMEOUT).await? {
                response::Result::BlobData(d) if d.size == size && !d.data.is_empty() => d.data,
                response::Result::BlobData(d) => {
                    return Err(ChatError::Internal(format!(
                        "{node} holds {} bytes of {id}, not {size}",
                        d.size
                    )));
                }
                other => {
                    return Err(ChatError::Internal(format!(
                        "a peer answered a read with {other:?}"
                    )));
                }
            };
            let take = data.len().min((size - offset) as usize);
            hasher.update(&data[..take]);
            file.write(&data[..take]).await?;
            offset += take as u64;
        }
        if <[u8; 32]>::from(hasher.finalize()) != hash {
            return Err(ChatError::Internal(format!(
                "the copy of {id} from {node} has another hash"
            )));
        }
        file.persist(&self.path(id)).await
    }

    /// Whether this node has file `id` complete.
    async fn holds(&self, id: &str, size: u64) -> bool {
        tokio::fs::metadata(self.path(id))
            .await
            .is_ok_and(|m| m.len() == size)
    }

    // ---- Raft and links -------------------------------------------------------------

    async fn propose(&self, p: placement::Partition, op: Op) -> ChatResult<outcome::Result> {
        self.remote.propose_op(p, op).await
    }

    async fn read(&self, p: placement::Partition, q: Q) -> ChatResult<A> {
        self.remote.query(p, q).await
    }

    async fn ask(&self, node: &str, op: request::Op, timeout: Duration) -> ChatResult<response::Result> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.remote.request_within(
            node,
            0,
            op,
            timeout,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.await.map_err(|_| stopped())?? {
            response::Result::Error(e) => Err(ChatError::from_proto(e)),
            other => Ok(other),
        }
    }
}

/// An upload on its way in: its bytes streamed to a temporary file and hashed as they
/// come. Dropped before [`Upload::finish`], it leaves nothing.
pub struct Upload {
    files: Arc<Files>,
    announced: Announced,
    file: TempFile,
    hasher: Sha256,
    received: u64,
}

impl Upload {
    /// Starts taking the bytes of an accepted upload.
    pub async fn start(files: Arc<Files>, announced: Announced) -> ChatResult<Self> {
        let file = TempFile::create(&files.tmp).await?;
        Ok(Self {
            files,
            announced,
            file,
            hasher: Sha256::new(),
            received: 0,
        })
    }

    /// The file's id.
    pub fn id(&self) -> &str {
        &self.announced.id
    }

    /// Takes the bytes at `offset` (which must be where the last ones ended); answers
    /// how many bytes are in.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> ChatResult<u64> {
        if offset != self.received {
            return Err(ChatError::BadRequest(format!(
                "chunk at offset {offset}, expected {}",
                self.received
            )));
        }
        let end = self.received.saturating_add(data.len() as u64);
        if end > self.announced.size {
            return Err(ChatError::HashMismatch(format!(
                "more bytes than the {} announced",
                self.announced.size
            )));
        }
        self.hasher.update(data);
        self.file.write(data).await?;
        self.received = end;
        Ok(end)
    }

    /// Checks the bytes against what was announced, keeps them, and stores the file
    /// (see [`Files`]). Nothing is kept when they differ.
    pub async fn finish(self) -> ChatResult<Attachment> {
        let Self {
            files,
            announced,
            file,
            hasher,
            received,
        } = self;
        if received != announced.size {
            return Err(ChatError::HashMismatch(format!(
                "{received} bytes received of the {} announced",
                announced.size
            )));
        }
        if <[u8; 32]>::from(hasher.finalize()) != announced.hash {
            return Err(ChatError::HashMismatch(
                "the bytes do not have the SHA-256 announced".into(),
            ));
        }
        file.persist(&files.path(&announced.id)).await?;
        files.commit(&announced).await
    }
}

/// What a connection asks of one of its uploads, in order.
pub enum Step {
    /// Bytes at an offset; answered with how many bytes are in.
    Chunk {
        offset: u64,
        data: Vec<u8>,
        reply: Box<dyn FnOnce(ChatResult<u64>) + Send>,
    },
    /// The last bytes came: answered once the file is stored.
    Finish {
        reply: Box<dyn FnOnce(ChatResult<Attachment>) + Send>,
    },
}

/// The answer to an `UploadBegin`.
pub type Ready = Box<dyn FnOnce(ChatResult<chat_protocol::v1::UploadReady>) + Send>;

/// Runs one upload of a connection: checks it (`ready` gets the answer), then takes
/// its steps in order until it is finished, fails, or the connection drops `steps`
/// (then nothing is kept).
pub async fn run_upload(
    files: Arc<Files>,
    user: String,
    begin: UploadBegin,
    chunk_bytes: u32,
    mut steps: tokio::sync::mpsc::Receiver<Step>,
    ready: Ready,
) {
    let id = begin.sha256.clone();
    let announced = match files.begin(&user, begin).await {
        Ok(Begun::Stored(attachment)) => {
            return ready(Ok(chat_protocol::v1::UploadReady {
                blob_id: id,
                stored: true,
                attachment: Some(attachment),
                upload_token: String::new(),
                chunk_bytes,
            }));
        }
        Ok(Begun::Send { announced, token }) => {
            ready(Ok(chat_protocol::v1::UploadReady {
                blob_id: id,
                stored: false,
                attachment: None,
                upload_token: token,
                chunk_bytes,
            }));
            announced
        }
        Err(e) => return ready(Err(e)),
    };
    let mut upload = match Upload::start(files, announced).await {
        Ok(upload) => Some(upload),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start an upload");
            None
        }
    };
    // An upload left without a step for this long is void (its file removed).
    while let Ok(Some(step)) = tokio::time::timeout(UPLOAD_IDLE, steps.recv()).await {
        let Some(current) = upload.as_mut() else {
            let e = ChatError::Internal("the upload could not be started".into());
            match step {
                Step::Chunk { reply, .. } => reply(Err(e)),
                Step::Finish { reply } => reply(Err(e)),
            }
            return;
        };
        match step {
            Step::Chunk { offset, data, reply } => {
                let written = current.write(offset, &data).await;
                let failed = written.is_err();
                reply(written);
                if failed {
                    // Out of order or too long: the upload is void (its file removed).
                    return;
                }
            }
            Step::Finish { reply } => {
                let upload = upload.take().expect("checked above");
                return reply(upload.finish().await);
            }
        }
    }
}

/// A file in `files/tmp/`, removed when dropped unless persisted.
struct TempFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl TempFile {
    async fn create(dir: &Path) -> ChatResult<Self> {
        let path = dir.join(crate::auth::new_token());
        let file = tokio::fs::File::create(&path).await.map_err(io_error)?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    async fn write(&mut self, data: &[u8]) -> ChatResult<()> {
        let file = self.file.as_mut().expect("open until persisted");
        file.write_all(data).await.map_err(io_error)
    }

    /// Syncs the file, moves it to `to` and syncs the folder: once this returns, the
    /// file survives a power cut.
    async fn persist(mut self, to: &Path) -> ChatResult<()> {
        let mut file = self.file.take().expect("open until persisted");
        file.flush().await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        tokio::fs::rename(&self.path, to).await.map_err(io_error)?;
        let dir = to.parent().map(Path::to_owned).unwrap_or_default();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?
            .map_err(io_error)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Up to `len` bytes of a local file from `offset`; `None` when there is no such file.
fn read_local(path: &Path, offset: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut data)?;
    Ok(Some(data))
}

/// An image's size and a JPEG preview of at most [`THUMB_SIDE`] px, if the file is an
/// image this node can read without using too much memory.
fn thumbnail(path: &Path, mime: &str) -> Option<(u32, u32, Vec<u8>)> {
    if !mime.starts_with("image/") {
        return None;
    }
    let open = || image::ImageReader::open(path).ok()?.with_guessed_format().ok();
    let (width, height) = open()?.into_dimensions().ok()?;
    if width > THUMB_MAX_SOURCE_SIDE || height > THUMB_MAX_SOURCE_SIDE {
        return Some((width, height, Vec::new()));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let small = reader.decode().ok()?.thumbnail(THUMB_SIDE, THUMB_SIDE).to_rgb8();
    for quality in [75u8, 50, 30] {
        let mut out = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        if small.write_with_encoder(encoder).is_err() {
            return Some((width, height, Vec::new()));
        }
        if out.len() <= THUMB_MAX_BYTES {
            return Some((width, height, out));
        }
    }
    Some((width, height, Vec::new()))
}

/// What a message carries of a file: its name and type as the sender gave them, the
/// rest from its record.
fn attachment(id: &str, name: &str, mime: &str, record: &BlobRecord) -> Attachment {
    Attachment {
        blob_id: id.to_owned(),
        name: name.to_owned(),
        mime: if mime.is_empty() {
            record.mime.clone()
        } else {
            mime.to_owned()
        },
        size: record.size,
        sha256: id.to_owned(),
        width: record.width,
        height: record.height,
        thumbnail: record.thumbnail.clone(),
    }
}

fn check_meta(name: &str, mime: &str) -> ChatResult<()> {
    if name.len() > MAX_NAME_BYTES || name.contains(['/', '\\', '\0']) {
        return Err(ChatError::BadRequest(format!(
            "a file name is at most {MAX_NAME_BYTES} bytes, without / \\ or NUL"
        )));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$&^_.+-/;=\" ".contains(c);
    if mime.len() > MAX_MIME_BYTES || !mime.chars().all(token) {
        return Err(ChatError::BadRequest(format!(
            "a MIME type is at most {MAX_MIME_BYTES} bytes of type/subtype"
        )));
    }
    Ok(())
}

fn no_file(id: &str) -> ChatError {
    ChatError::NotFound(format!("file {id}"))
}

fn shared_too_widely() -> ChatError {
    ChatError::NotAllowed("the file is shared with too many users or groups".into())
}

fn unexpected(o: outcome::Result) -> ChatError {
    ChatError::Internal(format!("unexpected outcome {o:?}"))
}

fn stopped() -> ChatError {
    ChatError::Unavailable("node is shutting down".into())
}

fn io_error(e: std::io::Error) -> ChatError {
    ChatError::Internal(format!("files: {e}"))
}

/// For each partition led here: applies retention (drops the records of files no
/// message carried within `files.retention_days`) and makes sure every replica holds
/// the files the partition records. Then removes the files here that no record of this
/// node's replicas names.
async fn sweep(files: std::sync::Weak<Files>, every: Duration) {
    let mut wait = Duration::from_secs(10).min(every);
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let Some(me) = files.upgrade() else { return };
        for p in me.consensus.led() {
            if me.cfg.retention_days > 0.0 {
                me.drop_expired(p).await;
            }
            me.repair(p).await;
        }
        let (dir, records, age) = (me.dir.clone(), me.records.clone(), me.orphan_age());
        let removed = tokio::task::spawn_blocking(move || remove_orphans(&dir, &records, age))
            .await
            .unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "files no record names removed");
        }
    }
}

impl Files {
    async fn drop_expired(&self, p: placement::Partition) {
        let before_ms = crate::storage::now_ms().saturating_sub(self.window_ms());
        let mut after = String::new();
        loop {
            let op = Op::DropBlobs(command::DropBlobs {
                before_ms,
                after: std::mem::take(&mut after),
                limit: blobs::MAX_DROP,
            });
            match self.propose(p, op).await {
                Ok(outcome::Result::Swept(last)) if !last.is_empty() => after = last,
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "file retention skipped");
                    return;
                }
            }
        }
    }

    /// Has every voter of partition `p` (this node included) hold each file the
    /// partition records, fetched from the nodes that have it.
    async fn repair(&self, p: placement::Partition) {
        let voters = self.voters(p);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let records = self.records.clone();
            let from = after.clone();
            let page = tokio::task::spawn_blocking(move || {
                use chat_state::store::Store;
                let mut nothing = crate::consensus::disk::Pending::new();
                let store = records.overlay(&mut nothing);
                store.scan(&chat_state::keys::blob_prefix(p), from.as_deref(), 256)
            })
            .await;
            let Ok(Ok(page)) = page else { return };
            for (key, value) in &page {
                let Ok(record) = BlobRecord::decode(value.as_slice()) else {
                    continue;
                };
                let id = blobs::id_of(&key[chat_state::keys::blob_prefix(p).len()..]);
                for voter in &voters {
                    let mut seen = std::collections::HashSet::new();
                    let from: Vec<String> = record
                        .holders
                        .iter()
                        .chain(&voters)
                        .filter(|n| *n != voter && seen.insert(n.to_owned()))
                        .cloned()
                        .collect();
                    let done = if *voter == self.me {
                        self.fetch(&id, record.size, &from).await
                    } else {
                        let op = request::Op::BlobFetch(BlobFetch {
                            blob: id.clone(),
                            size: record.size,
                            from,
                        });
                        let timeout =
                            crate::remote::REQUEST_TIMEOUT + Duration::from_millis(record.size / 5_000);
                        self.ask(voter, op, timeout).await.map(|_| ())
                    };
                    if let Err(e) = done {
                        tracing::info!(blob = %id, replica = %voter, error = %e, "a replica still lacks a file");
                    }
                }
            }
            match page.last() {
                Some((key, _)) if page.len() == 256 => after = Some(key.clone()),
                _ => return,
            }
        }
    }
}

/// Removes the files older than `min_age` that no record here names.
fn remove_orphans(dir: &Path, records: &Disk, min_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(hash) = name.to_str().and_then(blobs::parse_id) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        let key = chat_state::keys::blob(placement::of_blob(&hash), &hash);
        if old && matches!(records.record(&key), Ok(None)) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_are_checked() {
        assert!(check_meta("photo.png", "image/png").is_ok());
        assert!(check_meta("", "").is_ok());
        assert!(check_meta("a/b", "image/png").is_err());
        assert!(check_meta(&"x".repeat(MAX_NAME_BYTES + 1), "").is_err());
        assert!(check_meta("a", "image/png\n").is_err());
        assert!(check_meta("a", "text/plain; charset=utf-8").is_ok());
    }

    #[test]
    fn previews_are_small_jpegs_of_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.png");
        let img = image::RgbImage::from_fn(1000, 500, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        img.save(&path).unwrap();
        let (w, h, jpeg) = thumbnail(&path, "image/png").expect("a preview");
        assert_eq!((w, h), (1000, 500));
        assert!(!jpeg.is_empty() && jpeg.len() <= THUMB_MAX_BYTES);
        let small = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((small.width(), small.height()), (320, 160));
        assert_eq!(thumbnail(&path, "application/octet-stream"), None);
        std::fs::write(&path, b"not an image").unwrap();
        assert_eq!(thumbnail(&path, "image/png"), None);
    }

    #[test]
    fn only_old_files_no_record_names_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let records = Disk::open(&db).unwrap();
        let (named, orphan) = ([1u8; 32], [2u8; 32]);
        let key = chat_state::keys::blob(placement::of_blob(&named), &named);
        let mut pending = crate::consensus::disk::Pending::new();
        pending.insert(key, Some(BlobRecord::default().encode_to_vec()));
        let mut batch = sled::Batch::default();
        crate::consensus::disk::write_records(&mut batch, pending);
        records.apply(batch).unwrap();
        for name in [blobs::id_of(&named), blobs::id_of(&orphan), "tmp".into()] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // Too young: kept (a copy whose record is on its way).
        assert_eq!(remove_orphans(dir.path(), &records, Duration::from_secs(3600)), 0);
        assert_eq!(remove_orphans(dir.path(), &records, Duration::ZERO), 1);
        assert!(!dir.path().join(blobs::id_of(&orphan)).exists());
        assert!(dir.path().join(blobs::id_of(&named)).exists());
        assert!(dir.path().join("tmp").exists());
    }

    #[test]
    fn local_reads_take_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_local(&path, 3, 4).unwrap().unwrap(), b"3456");
        assert_eq!(read_local(&path, 8, 10).unwrap().unwrap(), b"89");
        assert_eq!(read_local(&dir.path().join("none"), 0, 1).unwrap(), None);
    }
}
