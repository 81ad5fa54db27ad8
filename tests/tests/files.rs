//! Files (attachments): uploaded on one node and downloaded on another, stored once per
//! content, readable only by whoever may read a message that carries them, kept when
//! the node that took the upload is killed right after answering, and refused (with
//! nothing kept) when too large, over quota, not the bytes announced or cut off.

use chat_client::proto::{Attachment, Delivery, ErrorCode};
use chat_client::{Client, ClientError, Push, sha256_hex};
use chat_tests::{DEADLINE, Node, NodeOpts, next_push, wait_for};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const COOKIE: &str = "files-cookie";

/// `len` bytes that differ with `seed` (and do not compress to nothing).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// The code of the error of a request that must fail.
fn bad<T>(r: Result<T, ClientError>) -> Option<ErrorCode> {
    code(&refused(r))
}

/// The error of a request that must fail (without printing what it got).
fn refused<T>(r: Result<T, ClientError>) -> ClientError {
    match r {
        Ok(_) => panic!("the request succeeded; it should have been refused"),
        Err(e) => e,
    }
}

async fn download_all(client: &Client, blob: &str, from: u64) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    client.download_to(blob, from, &mut out).await?;
    Ok(out)
}

/// The next delivery that carries files.
async fn next_with_files(pushes: &mut UnboundedReceiver<Push>) -> Delivery {
    next_push(pushes, |p| match p {
        Push::Delivery(d) if !d.attachments.is_empty() => Some(d.clone()),
        _ => None,
    })
    .await
    .unwrap()
}

/// Files in a node's `files/` folder (not counting uploads under way).
fn stored_files(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.data_dir().join("files"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "tmp")
                .collect()
        })
        .unwrap_or_default()
}

fn temp_files(node: &Node) -> usize {
    std::fs::read_dir(node.data_dir().join("files").join("tmp")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn files_cross_nodes_once_per_content_for_their_readers_only_and_survive_a_kill() {
    let mut nodes = chat_tests::three_nodes(["fa", "fb", "fc"], COOKIE).await;
    let (ann, _) = nodes[0].user("ann").await.unwrap();
    let (bob, mut bob_pushes) = nodes[1].user("bob").await.unwrap();
    let (dora, _) = nodes[2].user("dora").await.unwrap();
    let (eve, mut eve_pushes) = nodes[2].user("eve").await.unwrap();

    // Several frames' worth: the upload streams in chunks.
    let data = bytes(300_000, 1);
    let sent = ann
        .upload_bytes("report.bin", "application/octet-stream", &data)
        .await
        .unwrap();
    assert_eq!(sent.blob_id, sha256_hex(&data));
    assert_eq!(
        (sent.size, sent.sha256.as_str()),
        (data.len() as u64, sent.blob_id.as_str())
    );
    // Every replica holds it (three nodes, three replicas).
    for node in &nodes {
        assert_eq!(stored_files(node), vec![sent.blob_id.clone()], "on {}", node.addr);
    }

    // The same bytes again: the cluster has them, nothing is sent.
    let again = ann
        .upload_begin("copy.bin", "", data.len() as u64, &sent.blob_id)
        .await
        .unwrap();
    assert!(again.stored, "a second upload of the same bytes sends nothing");
    assert_eq!(again.attachment.as_ref().map(|a| a.size), Some(data.len() as u64));

    // Nobody else reads it yet: the same answer as for a file that does not exist.
    let denied = refused(download_all(&bob, &sent.blob_id, 0).await);
    let missing = download_all(&bob, &sha256_hex(b"no such file"), 0)
        .await
        .unwrap_err();
    assert_eq!(code(&denied), Some(ErrorCode::NotFound), "{denied}");
    assert_eq!(code(&missing), Some(ErrorCode::NotFound));

    // A private message carries it: its recipient reads it, on another node.
    ann.send_private_files("bob", "the report", vec![sent.clone()])
        .await
        .unwrap();
    let got = next_with_files(&mut bob_pushes).await;
    let file = &got.attachments[0];
    assert_eq!((file.name.as_str(), file.size), ("report.bin", data.len() as u64));
    assert_eq!(download_all(&bob, &file.blob_id, 0).await.unwrap(), data);
    // Resumed from a byte offset.
    assert_eq!(
        download_all(&bob, &file.blob_id, 123_457).await.unwrap(),
        data[123_457..]
    );
    // Sync returns it too.
    let synced = bob.sync_all(0).await.unwrap();
    assert!(
        synced
            .iter()
            .any(|d| d.attachments.first().map(|a| &a.blob_id) == Some(&sent.blob_id))
    );

    // Not to whom it was not sent.
    let denied = refused(download_all(&dora, &sent.blob_id, 0).await);
    assert_eq!(code(&denied), Some(ErrorCode::NotFound));
    // Nor may anyone attach a file they cannot read.
    let stolen = Attachment {
        blob_id: sent.blob_id.clone(),
        ..Attachment::default()
    };
    let e = dora
        .send_private_files("eve", "look", vec![stolen])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NotFound), "{e}");

    // A group post carries one: its members read it, others do not.
    ann.create_group("plans").await.unwrap();
    eve.join_group("plans").await.unwrap();
    let plan = bytes(70_000, 2);
    let posted = ann.upload_bytes("plan.bin", "", &plan).await.unwrap();
    ann.send_group_files("plans", "the plan", vec![posted.clone()])
        .await
        .unwrap();
    let got = next_with_files(&mut eve_pushes).await;
    assert_eq!(got.attachments[0].blob_id, posted.blob_id);
    assert_eq!(download_all(&eve, &posted.blob_id, 0).await.unwrap(), plan);
    let e = refused(download_all(&dora, &posted.blob_id, 0).await);
    assert_eq!(code(&e), Some(ErrorCode::NotFound));

    // Killed right after it answered an upload, the node that took it loses nothing:
    // the others read it.
    let last = bytes(200_000, 3);
    let kept = ann.upload_bytes("last.bin", "", &last).await.unwrap();
    ann.send_private_files("bob", "last", vec![kept.clone()])
        .await
        .unwrap();
    nodes[0].kill9();
    // Until the partitions it led elect new leaders, requests may be UNAVAILABLE: a
    // client retries those.
    let again = |client: Client, blob: String| async move {
        wait_for("the file read from the survivors", DEADLINE, || {
            let (client, blob) = (client.clone(), blob.clone());
            async move {
                match download_all(&client, &blob, 0).await {
                    Err(e) if code(&e) == Some(ErrorCode::Unavailable) => None,
                    other => Some(other),
                }
            }
        })
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(again(bob.clone(), kept.blob_id.clone()).await, last);
    assert_eq!(again(eve.clone(), posted.blob_id.clone()).await, plan);
}

fn small_limits() -> NodeOpts {
    NodeOpts {
        extra_toml: "[files]\nmax_file_bytes = 100000\nquota_bytes = 150000\n".into(),
        ..NodeOpts::default()
    }
}

#[tokio::test]
async fn refused_uploads_keep_nothing() {
    let node = Node::start_with(small_limits()).unwrap();
    let (ann, _) = node.user("ann").await.unwrap();
    // The limit is announced at login, so a client can refuse before reading a file.
    let (_, _, ok) = node.login("ann").await.unwrap();
    assert_eq!(ok.max_file_bytes, 100_000);

    // Too large: refused before any byte is sent.
    let big = bytes(100_001, 4);
    let e = ann.upload_bytes("big", "", &big).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::FileTooLarge), "{e}");

    // Not the bytes announced: refused, nothing kept.
    let data = bytes(90_000, 5);
    let wrong = sha256_hex(b"something else");
    let ready = ann
        .upload_begin("x", "", data.len() as u64, &wrong)
        .await
        .unwrap();
    assert!(!ready.stored);
    let step = ready.chunk_bytes as usize;
    let mut offset = 0;
    for piece in data.chunks(step) {
        ann.upload_chunk(&wrong, offset, piece.to_vec()).await.unwrap();
        offset += piece.len() as u64;
    }
    let e = ann.upload_finish(&wrong).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::HashMismatch), "{e}");
    assert!(stored_files(&node).is_empty());
    wait_for("no upload left behind", DEADLINE, || async {
        (temp_files(&node) == 0).then_some(())
    })
    .await
    .unwrap();
    assert!(!ann.upload_begin("x", "", 10, &wrong).await.unwrap().stored);

    // A chunk out of order voids the upload.
    let id = sha256_hex(&data);
    ann.upload_begin("y", "", data.len() as u64, &id).await.unwrap();
    let e = ann.upload_chunk(&id, 5, data[..10].to_vec()).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    let e = ann.upload_chunk(&id, 0, data[..10].to_vec()).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");

    // Within the quota; the same bytes again cost nothing; new bytes past it are refused.
    ann.upload_bytes("ok", "", &data).await.unwrap();
    assert!(
        ann.upload_begin("ok again", "", data.len() as u64, &id)
            .await
            .unwrap()
            .stored
    );
    let more = bytes(90_000, 6);
    let e = ann.upload_bytes("more", "", &more).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::QuotaExceeded), "{e}");
    // Another user has a quota of its own.
    let (bob, _) = node.user("bob").await.unwrap();
    bob.upload_bytes("more", "", &more).await.unwrap();

    // Cut off half way (the connection closes): nothing is kept.
    let (cy, _) = node.user("cy").await.unwrap();
    // Ann's last begin is an upload under way on her connection.
    let before = temp_files(&node);
    let half = bytes(80_000, 7);
    let half_id = sha256_hex(&half);
    cy.upload_begin("half", "", half.len() as u64, &half_id)
        .await
        .unwrap();
    cy.upload_chunk(&half_id, 0, half[..40_000].to_vec())
        .await
        .unwrap();
    wait_for("the upload under way has its file", DEADLINE, || async {
        (temp_files(&node) == before + 1).then_some(())
    })
    .await
    .unwrap();
    drop(cy);
    wait_for("the cut upload removed", DEADLINE, || async {
        (temp_files(&node) == before).then_some(())
    })
    .await
    .unwrap();
    assert!(!stored_files(&node).contains(&half_id));
    let (cy, _, _) = node.login("cy").await.unwrap();
    assert!(
        !cy.upload_begin("half", "", half.len() as u64, &half_id)
            .await
            .unwrap()
            .stored
    );
}

#[tokio::test]
async fn images_get_a_preview_made_by_the_server() {
    let node = Node::start().unwrap();
    let (ann, _) = node.user("ann").await.unwrap();
    let (_bob, mut bob_pushes) = node.user("bob").await.unwrap();
    let img = image::RgbImage::from_fn(800, 600, |x, y| image::Rgb([(x / 4) as u8, (y / 3) as u8, 128]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let sent = ann
        .upload_bytes("pic.png", "image/png", png.get_ref())
        .await
        .unwrap();
    assert_eq!((sent.width, sent.height), (800, 600));
    let preview = image::load_from_memory(&sent.thumbnail).expect("a JPEG preview");
    assert_eq!((preview.width(), preview.height()), (320, 240));
    ann.send_private_files("bob", "", vec![sent.clone()])
        .await
        .unwrap();
    let got = next_with_files(&mut bob_pushes).await;
    assert_eq!(
        got.attachments[0].thumbnail, sent.thumbnail,
        "the preview travels with the message"
    );
    assert_eq!(got.attachments[0].mime, "image/png");
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_200_mb_file_streams_through_in_bounded_memory() {
    const SIZE: usize = 200 << 20;
    let node = Node::start_with(NodeOpts {
        extra_toml: format!("[files]\nmax_file_bytes = {}\n", SIZE + 1),
        // A small page cache, so that the node's own memory is what is measured.
        ..NodeOpts::default()
    })
    .unwrap();
    let (ann, _) = node.user("ann").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..(SIZE / (1 << 20)) {
            f.write_all(&bytes(1 << 20, i as u64 + 100)).unwrap();
        }
    }
    let before = peak_rss(node.pid());
    let sent = tokio::time::timeout(Duration::from_secs(600), ann.upload_file(&path, None))
        .await
        .expect("uploaded in time")
        .unwrap();
    assert_eq!(sent.size, SIZE as u64);
    let out = dir.path().join("back.bin");
    let size = ann.download_file(&sent.blob_id, &out).await.unwrap();
    assert_eq!(size, SIZE as u64);
    let (back_size, back_hash) = chat_client::hash_file(&out).await.unwrap();
    assert_eq!((back_size, back_hash), (SIZE as u64, sent.blob_id.clone()));
    let grown = peak_rss(node.pid()).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the node's peak memory grew by {} MiB while a {} MiB file went through",
        grown >> 20,
        SIZE >> 20
    );
}

/// An HTTP/1.1 request with a body; answers the status, the head and the raw body.
async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("ws://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, head, raw[split + 4..].to_vec())
}

#[tokio::test]
async fn files_go_up_and_down_over_http_with_ranges_for_their_readers_only() {
    let node = Node::start_with(NodeOpts {
        client_toml: "websocket_listen = \"127.0.0.1:0\"\n".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    let web = node.ws.clone().expect("a web port");
    let (ann, _) = node.user("ann").await.unwrap();
    let (bob, _) = node.connect().await.unwrap();
    bob.register("bob", &chat_tests::password("bob")).await.unwrap();
    let login = bob.login("bob", &chat_tests::password("bob")).await.unwrap();
    let bob_auth = format!("Bearer bob:{}", login.token);
    let data = bytes(1_500_000, 8);
    let id = sha256_hex(&data);
    let path = format!("/files/{id}");

    // Bytes that are not those announced: refused, nothing kept.
    let ready = ann
        .upload_begin("data.bin", "", data.len() as u64, &id)
        .await
        .unwrap();
    let auth = format!("Bearer {}", ready.upload_token);
    let mut wrong = data.clone();
    wrong[7] ^= 1;
    let (status, _, _) = http(&web, "PUT", &path, &[("Authorization", &auth)], &wrong).await;
    assert_eq!(status, 422);
    assert!(stored_files(&node).is_empty());
    // A token is used once.
    let (status, _, _) = http(&web, "PUT", &path, &[("Authorization", &auth)], &data).await;
    assert_eq!(status, 403);

    let ready = ann
        .upload_begin("data.bin", "", data.len() as u64, &id)
        .await
        .unwrap();
    let auth = format!("Bearer {}", ready.upload_token);
    let (status, _, body) = http(&web, "PUT", &path, &[("Authorization", &auth)], &data).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["size"], data.len() as u64);
    let attachment = Attachment {
        blob_id: id.clone(),
        name: "data.bin".into(),
        ..Attachment::default()
    };

    // Bob may not read it until a message carries it to him.
    let (status, _, _) = http(&web, "GET", &path, &[("Authorization", &bob_auth)], b"").await;
    assert_eq!(status, 404);
    ann.send_private_files("bob", "data", vec![attachment])
        .await
        .unwrap();
    let (status, head, body) = http(&web, "GET", &path, &[("Authorization", &bob_auth)], b"").await;
    assert_eq!(status, 200, "{head}");
    assert!(body == data, "the whole file comes back");
    assert!(
        head.to_lowercase().contains("content-disposition: attachment"),
        "{head}"
    );
    // Resumed: a range.
    let (status, head, body) = http(
        &web,
        "GET",
        &path,
        &[("Authorization", &bob_auth), ("Range", "bytes=1000000-")],
        b"",
    )
    .await;
    assert_eq!(status, 206);
    assert!(
        head.contains(&format!("bytes 1000000-{}/{}", data.len() - 1, data.len())),
        "{head}"
    );
    assert!(body == data[1_000_000..]);
    let (status, _, _) = http(
        &web,
        "GET",
        &path,
        &[("Authorization", &bob_auth), ("Range", "bytes=2000000-")],
        b"",
    )
    .await;
    assert_eq!(status, 416);
    // Without a login, or with a wrong one: refused.
    let (status, _, _) = http(&web, "GET", &path, &[], b"").await;
    assert_eq!(status, 401);
    let fake = format!("Bearer bob:{}", "0".repeat(64));
    let (status, _, _) = http(&web, "GET", &path, &[("Authorization", &fake)], b"").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_cli_sends_prints_and_downloads_files_with_exit_codes() {
    let node = Node::start_with(small_limits()).unwrap();
    node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    let run = |user: &str, args: &[&str]| {
        let mut all: Vec<String> = ["--server", &node.addr, "--user", user]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(["--password".to_owned(), chat_tests::password(user)]);
        all.extend(args.iter().map(|s| s.to_string()));
        async move {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            chat_tests::cli(&args).await.unwrap()
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(90_000, 9);
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, &data).unwrap();
    let (ok, out, err) = run(
        "alice",
        &["send-file", "bob", path.to_str().unwrap(), "--text", "notes"],
    )
    .await;
    assert!(ok, "{err}");
    let blob = out.split_whitespace().last().unwrap().to_owned();
    assert_eq!(blob, sha256_hex(&data), "{out}");
    let (ok, out, err) = run("bob", &["recv", "--wait", "1"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("file notes.txt (90.0 KB, text/plain) blob {blob}")),
        "{out}"
    );
    let back = dir.path().join("back.txt");
    let (ok, out, err) = run("bob", &["download", &blob, "--out", back.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("downloaded"), "{out}");
    assert!(std::fs::read(&back).unwrap() == data);
    // Refusals exit non-zero with the reason.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, bytes(100_001, 10)).unwrap();
    let (ok, _, err) = run("alice", &["send-file", "bob", big.to_str().unwrap()]).await;
    assert!(!ok && err.contains("larger than"), "{err}");
    let other = dir.path().join("other.bin");
    let (ok, _, err) = run(
        "alice",
        &[
            "download",
            &sha256_hex(b"nothing"),
            "--out",
            other.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok && err.contains("not found"), "{err}");
    assert!(!other.exists(), "a refused download leaves no file");
}

#[tokio::test]
async fn a_replica_that_missed_an_upload_gets_the_file_once_back() {
    let extra = "[files]\ncheck_every_secs = 1\n";
    let mut nodes = chat_tests::three_nodes_with(["ra", "rb", "rc"], COOKIE, extra).await;
    let (ann, _) = nodes[0].user("ann").await.unwrap();
    nodes[2].kill9();
    // Two of three replicas are a majority: the upload is answered (once the partitions
    // the killed node led have new leaders).
    let data = bytes(150_000, 11);
    let sent = wait_for("an upload with one replica down", DEADLINE, || async {
        match ann.upload_bytes("while.bin", "", &data).await {
            Err(e) if code(&e) == Some(ErrorCode::Unavailable) => None,
            other => Some(other),
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(!stored_files(&nodes[2]).contains(&sent.blob_id));
    nodes[2].restart().unwrap();
    wait_for(
        "the returned replica holds the file",
        Duration::from_secs(60),
        || async { stored_files(&nodes[2]).contains(&sent.blob_id).then_some(()) },
    )
    .await
    .unwrap();
    let copy = std::fs::read(nodes[2].data_dir().join("files").join(&sent.blob_id)).unwrap();
    assert!(copy == data, "the copy is the file");
}

#[tokio::test]
async fn malformed_file_requests_get_typed_errors_and_the_connection_stays_usable() {
    let node = Node::start().unwrap();
    let (ann, _) = node.user("ann").await.unwrap();
    // Not a SHA-256, a name with a slash, a type with a newline.
    assert_eq!(
        bad(ann.upload_begin("a", "", 1, "xyz").await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        bad(ann.upload_begin("a", "", 1, &"A".repeat(64)).await),
        Some(ErrorCode::BadRequest)
    );
    let id = sha256_hex(b"a");
    assert_eq!(
        bad(ann.upload_begin("../a", "", 1, &id).await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        bad(ann.upload_begin("a", "text/\nplain", 1, &id).await),
        Some(ErrorCode::BadRequest)
    );
    // Chunks and a finish of no upload.
    assert_eq!(
        bad(ann.upload_chunk(&id, 0, b"a".to_vec()).await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(bad(ann.upload_finish(&id).await), Some(ErrorCode::BadRequest));
    // More bytes than announced.
    ann.upload_begin("a", "", 1, &id).await.unwrap();
    assert_eq!(
        bad(ann.upload_chunk(&id, 0, b"ab".to_vec()).await),
        Some(ErrorCode::HashMismatch)
    );
    // Downloads of no file, or past its end.
    assert_eq!(
        bad(ann.download_chunk("nope", 0, 0).await),
        Some(ErrorCode::NotFound)
    );
    let file = ann.upload_bytes("a", "", b"a").await.unwrap();
    assert!(
        ann.download_chunk(&file.blob_id, 5, 0)
            .await
            .unwrap()
            .data
            .is_empty()
    );
    // Messages with too many files, or files that do not exist.
    let many = vec![file.clone(); 9];
    assert_eq!(
        bad(ann.send_private_files("ann", "", many).await),
        Some(ErrorCode::BadRequest)
    );
    let ghost = Attachment {
        blob_id: "not-a-blob".into(),
        ..Attachment::default()
    };
    assert_eq!(
        bad(ann.send_private_files("ann", "", vec![ghost]).await),
        Some(ErrorCode::NotFound)
    );
    // Still usable.
    ann.send_private_files("ann", "mine", vec![file]).await.unwrap();
}

#[tokio::test]
async fn files_no_message_carried_within_retention_are_removed() {
    // About 4 s of retention, checked every second.
    let node = Node::start_with(NodeOpts {
        extra_toml: "[files]\nretention_days = 0.00005\ncheck_every_secs = 1\n".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    let (ann, _) = node.user("ann").await.unwrap();
    let file = ann.upload_bytes("old.bin", "", &bytes(5_000, 12)).await.unwrap();
    assert_eq!(stored_files(&node), vec![file.blob_id.clone()]);
    wait_for("the file's record and copy removed", Duration::from_secs(60), || async {
        let gone = matches!(ann.download_chunk(&file.blob_id, 0, 0).await, Err(e) if code(&e) == Some(ErrorCode::NotFound));
        (gone && stored_files(&node).is_empty()).then_some(())
    })
    .await
    .unwrap();
    // Its bytes are new again: an upload sends them.
    let again = ann
        .upload_begin("old.bin", "", file.size, &file.blob_id)
        .await
        .unwrap();
    assert!(!again.stored);
}
