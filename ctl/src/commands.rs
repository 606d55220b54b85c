//! One function per command: build the request, make the call, print the answer.
//!
//! No sync logic lives here: each command is one RPC (`ls` repeats List for its pages,
//! `rm` Delete for its ids, `put --wait` follows Watch and Status to show why it waits,
//! and every connection first checks the API version). Anything two clients would need
//! belongs in the daemon behind an RPC.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use blobsync_proto as pb;
use clap::CommandFactory;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::{self, Cli, Command};
use crate::client::{self, Client, CtlError};
use crate::render::{self, Table};

/// Bytes per Put chunk: big enough that per-message overhead is negligible, small enough
/// that the bounded queue below holds little memory.
const PUT_CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the network (4 x 256 KiB = 1 MiB in flight at most).
const PUT_QUEUE: usize = 4;
/// List page size requested from the daemon.
const LS_PAGE: u32 = 1000;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let json = cli.json;
    let socket = cli.socket.clone();
    let connect = || async {
        let path = client::discover_socket(socket.as_deref())?;
        client::connect(&path).await
    };
    match cli.command {
        Command::Completions { shell } => {
            // Into a buffer first: `generate` panics on a write error, e.g. `| head`.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "blobctl", &mut buf);
            out(&String::from_utf8_lossy(&buf))
        }
        Command::Key(k) => crate::keys::run(k, json).await,
        Command::Version => version(socket.as_deref(), json).await,
        Command::Put(a) => put(&mut connect().await?, a, json).await,
        Command::Get(mut a) => {
            (a.namespace, a.id) =
                cli::split_ns_id_or_default(&a.namespace, &a.id).map_err(CtlError::Usage)?;
            if a.output.is_none() {
                // Binary on a terminal garbles it (and a big blob takes minutes): as curl.
                if !json && std::io::stdout().is_terminal() {
                    return Err(CtlError::Usage(
                        "refusing to write the blob's bytes to a terminal: give -o FILE, pipe \
                         the output, or -o - to print them here anyway"
                            .into(),
                    ));
                }
                a.output = Some(PathBuf::from("-"));
            }
            if json && a.output.as_deref() == Some(Path::new("-")) {
                return Err(CtlError::Usage(
                    "--json prints a JSON document on standard output, so it needs -o FILE for \
                     the blob's bytes"
                        .into(),
                ));
            }
            get(&mut connect().await?, a, json).await
        }
        Command::Rm(a) => rm(&mut connect().await?, a, json).await,
        Command::Ls(a) if a.remote => ls_remote(&mut connect().await?, a, json).await,
        Command::Ls(a) => ls(&mut connect().await?, a, json).await,
        Command::Status => status(&mut connect().await?, json).await,
        Command::Incoming(crate::cli::IncomingCommand::Recipient) => {
            let r = connect()
                .await?
                .get_incoming_recipient(pb::GetIncomingRecipientRequest {})
                .await?
                .into_inner()
                .recipient;
            if json {
                out_json(&json!({ "recipient": r }))
            } else {
                out(&format!("{r}\n"))
            }
        }
        Command::Sync(a) => sync(&mut connect().await?, a, json).await,
        Command::Watch(a) => watch(&mut connect().await?, a, json).await,
        Command::Retry(mut a) => {
            if let Some(id) = &a.id {
                let (ns, id) =
                    cli::split_ns_id(a.namespace.as_deref(), id).map_err(CtlError::Usage)?;
                (a.namespace, a.id) = (ns, Some(id));
            }
            retry(&mut connect().await?, a, json).await
        }
        Command::Priority(mut a) => {
            (a.namespace, a.id) =
                cli::split_ns_id_or_default(&a.namespace, &a.id).map_err(CtlError::Usage)?;
            priority(&mut connect().await?, a, json).await
        }
        Command::Flags(mut a) => {
            (a.namespace, a.id) =
                cli::split_ns_id_or_default(&a.namespace, &a.id).map_err(CtlError::Usage)?;
            flags(&mut connect().await?, a, json).await
        }
        Command::Verify(mut a) => {
            if let Some(id) = &a.id {
                let (ns, id) =
                    cli::split_ns_id(a.namespace.as_deref(), id).map_err(CtlError::Usage)?;
                (a.namespace, a.id) = (ns, Some(id));
            }
            verify(&mut connect().await?, a, json).await
        }
        Command::Pause(a) => pause(&mut connect().await?, a, true, json).await,
        Command::Resume(a) => pause(&mut connect().await?, a, false, json).await,
        Command::Limits(a) => limits(&mut connect().await?, a, json).await,
    }
}

/// Writes text to standard output (a closed pipe ends blobctl quietly, see `main`).
pub fn out(text: &str) -> Result<(), CtlError> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|_| o.flush())
        .map_err(|e| CtlError::io("writing to standard output", e))
}

fn out_json(v: &Value) -> Result<(), CtlError> {
    // Unwrap: serializing a Value cannot fail.
    out(&format!("{}\n", serde_json::to_string_pretty(v).unwrap()))
}

/// Progress bars only for people: stdout a terminal and no --json.
fn show_progress(json: bool) -> bool {
    !json && std::io::stdout().is_terminal()
}

fn bytes_bar(total: Option<u64>, visible: bool, what: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(bytes_style()),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {binary_bytes_per_sec}")
                .expect("static template"),
        ),
    };
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A byte bar sized to the terminal: what, bar, done/total, rate, ETA.
fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("static template")
    .progress_chars("=> ")
}

/// Turns `bar` (a spinner until the first progress event) into a byte bar for the daemon's
/// transfer of a blob to or from the server, and moves it.
fn show_transfer(bar: &ProgressBar, what: &str, p: &pb::TransferProgress) {
    if bar.is_hidden() {
        return;
    }
    if p.bytes_total == 0 {
        bar.set_message(format!("{what}: {}", render::human_size(p.bytes_done)));
        return;
    }
    if bar.length() != Some(p.bytes_total) {
        bar.set_style(bytes_style());
        bar.set_length(p.bytes_total);
        bar.set_message(what.to_owned());
    }
    bar.set_position(p.bytes_done);
}

fn spinner(visible: bool, what: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn blob_line(b: &pb::BlobInfo) -> String {
    format!(
        "{}/{}  {}  {}",
        b.namespace,
        b.id,
        render::human_size(b.size),
        render::status_name(b.status)
    )
}

async fn put(c: &mut Client, mut a: cli::PutArgs, json: bool) -> Result<(), CtlError> {
    if a.files.len() > 1 {
        return put_many(c, a, json).await;
    }
    let file = a.files.pop().expect("clap requires a FILE");
    let from_stdin = file == Path::new("-");
    // blobctl follows the upload itself (see `wait_upload`): it can say why it waits, and
    // on Ctrl-C name the blob that stays queued. Events from here on are replayed to it.
    let since = if a.wait && !a.local_only {
        Some(
            c.status(pb::StatusRequest {})
                .await?
                .into_inner()
                .last_event_id,
        )
    } else {
        None
    };
    let mut header = pb::PutHeader {
        namespace: a.namespace,
        id: a.id.unwrap_or_default(),
        priority: a.priority as i32,
        local_only: a.local_only,
        size_hint: None,
        wait: false,
    };
    let visible = show_progress(json);
    let blob = if a.by_path {
        if from_stdin {
            return Err(CtlError::Usage("--by-path needs a file, not `-`".into()));
        }
        let path = std::path::absolute(&file)
            .map_err(|e| CtlError::io(format!("resolving {}", file.display()), e))?;
        c.put_path(pb::PutPathRequest {
            header: Some(header),
            path: path.to_string_lossy().into_owned(),
        })
        .await?
        .into_inner()
        .blob
    } else {
        let (reader, size): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = if from_stdin {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let what = || format!("opening {}", file.display());
            let f = tokio::fs::File::open(&file)
                .await
                .map_err(|e| CtlError::io(what(), e))?;
            let meta = f.metadata().await.map_err(|e| CtlError::io(what(), e))?;
            if meta.is_dir() {
                return Err(CtlError::Usage(format!(
                    "{} is a directory; blobctl put stores one file (archive a directory first, \
                     e.g. `tar c DIR | blobctl put -`)",
                    file.display()
                )));
            }
            // Only regular files have a size worth promising; a FIFO or device streams.
            (Box::new(f), meta.is_file().then_some(meta.len()))
        };
        header.size_hint = size;
        let bar = bytes_bar(size, visible, "uploading to blobsyncd");
        put_stream(c, header, reader, &bar, &file).await?
    };
    let mut blob =
        blob.ok_or_else(|| CtlError::Rpc(tonic::Status::internal("the daemon sent no blob")))?;
    if let Some(since) = since {
        blob = wait_upload(c, blob, since, visible).await?;
    }
    if json {
        out_json(&render::blob_json(&blob))?;
    } else {
        out(&format!("{}\n", blob_line(&blob)))?;
    }
    if blob.status == pb::BlobStatus::FailedUpload as i32 {
        return Err(CtlError::Problems(format!(
            "the upload failed for good: {}; see `blobctl ls -n {}` and `blobctl retry {}`",
            blob.last_error, blob.namespace, blob.id
        )));
    }
    Ok(())
}

/// Why an upload is not done, from the daemon's status: `Err` when it will not be done
/// without the user (the server refuses the credentials), `Ok(None)` when nothing stops it.
fn upload_blocked(s: &pb::StatusResponse, ns: &str, name: &str) -> Result<Option<String>, String> {
    let Some(r) = &s.remote else { return Ok(None) };
    if r.unauthorized {
        return Err(format!(
            "{}. {name} is stored on this device and stays queued for upload; fix `token_file` \
             or `user` in the daemon's config, then restart blobsyncd",
            r.last_error
        ));
    }
    if s.paused {
        return Ok(Some("sync is paused (`blobctl resume`)".into()));
    }
    if s.namespaces.iter().any(|n| n.namespace == ns && n.paused) {
        return Ok(Some(format!(
            "namespace {ns} is paused (`blobctl resume -n {ns}`)"
        )));
    }
    if !r.reachable && !r.last_error.is_empty() {
        return Ok(Some(format!(
            "the server is unreachable ({}); retrying",
            r.last_error
        )));
    }
    Ok(None)
}

/// `put --wait` once the daemon holds the blob: follows its upload (events, and the daemon's
/// status every second), shows why it still waits, and fails at once when the server refuses
/// this device's credentials. Ctrl-C leaves the blob queued, and says so.
async fn wait_upload(
    c: &mut Client,
    mut blob: pb::BlobInfo,
    since: u64,
    visible: bool,
) -> Result<pb::BlobInfo, CtlError> {
    use pb::event::Kind;
    let pending = pb::BlobStatus::PendingUpload as i32;
    if blob.status != pending {
        return Ok(blob);
    }
    let name = format!("{}/{}", blob.namespace, blob.id);
    let spin = spinner(visible, "waiting for the upload to the server");
    // Without a spinner (not a terminal), each new reason is one line on stderr.
    let mut shown = String::new();
    let mut show = |why: String| {
        if why != shown {
            if visible {
                spin.set_message(why.clone());
            } else {
                eprintln!("blobctl: waiting for {name}: {why}");
            }
            shown = why;
        }
    };
    let mut events = c
        .clone()
        .watch(pb::WatchRequest {
            since: Some(since),
            namespace: blob.namespace.clone(),
            no_progress: !visible,
        })
        .await?
        .into_inner();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failure = String::new();
    let result = loop {
        tokio::select! {
            e = events.message() => {
                let Some(e) = e? else {
                    break Err(CtlError::Rpc(tonic::Status::unavailable(format!(
                        "the daemon is shutting down; {name} stays queued for upload"
                    ))));
                };
                match e.kind {
                    Some(Kind::StatusChanged(s)) if s.namespace == blob.namespace && s.id == blob.id => {
                        if s.new_status == pending {
                            continue;
                        }
                        blob.status = s.new_status;
                        blob.last_error = if s.reason.is_empty() { failure.clone() } else { s.reason };
                        if s.new_status == pb::BlobStatus::Synced as i32 {
                            blob.last_error.clear();
                            blob.attempts = 0;
                        }
                        break Ok(blob);
                    }
                    Some(Kind::TransferFailed(f)) if f.namespace == blob.namespace && f.id == blob.id => {
                        failure = f.message.clone();
                        let next = f.next_attempt.as_ref().map_or(String::new(), |t| {
                            let secs = (t.seconds - render::now_unix()).max(0);
                            format!("; next try in {secs}s")
                        });
                        show(format!("attempt {} failed: {}{next}", f.attempt, f.message));
                    }
                    Some(Kind::TransferProgress(p)) if p.namespace == blob.namespace && p.id == blob.id => {
                        if visible {
                            show_transfer(&spin, "uploading to the server", &p);
                        } else {
                            show(format!(
                                "uploading to the server: {} / {}",
                                render::human_size(p.bytes_done),
                                render::human_size(p.bytes_total)
                            ));
                        }
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let s = c.status(pb::StatusRequest {}).await?.into_inner();
                match upload_blocked(&s, &blob.namespace, &name) {
                    Err(why) => break Err(CtlError::Rpc(tonic::Status::permission_denied(why))),
                    Ok(Some(why)) => show(why),
                    Ok(None) => {}
                }
            }
            _ = tokio::signal::ctrl_c() => {
                break Err(CtlError::Interrupted(format!(
                    "interrupted: {name} is stored on this device and stays queued for upload \
                     (`blobctl ls -n {}` shows it)",
                    blob.namespace
                )));
            }
        }
    };
    spin.finish_and_clear();
    result
}

/// What became of one file of a multi-file `put`: the blob, or the gRPC code and message.
type PutOutcome = Result<pb::BlobInfo, (i32, String)>;

/// `put` of several files: one blob each, refused for good or stored each on its own. With
/// `--by-path` the daemon reads them, up to 1,000 per `PutPaths` call (made durable together);
/// otherwise each is streamed in turn. One line (or JSON object) per file, in order.
async fn put_many(c: &mut Client, a: cli::PutArgs, json: bool) -> Result<(), CtlError> {
    /// Files per `PutPaths` call.
    const PER_CALL: usize = 1000;
    if a.files.iter().any(|f| f == Path::new("-")) {
        return Err(CtlError::Usage(
            "`-` (standard input) can only be put alone".into(),
        ));
    }
    if a.id.is_some() {
        return Err(CtlError::Usage(
            "--id names one blob; put several files without it (each gets a random id)".into(),
        ));
    }
    if a.wait {
        return Err(CtlError::Usage(
            "--wait takes one file; for several, put them, then `blobctl sync --wait`".into(),
        ));
    }
    let header = pb::PutHeader {
        namespace: a.namespace.clone(),
        id: String::new(),
        priority: a.priority as i32,
        local_only: a.local_only,
        size_hint: None,
        wait: false,
    };
    // The daemon reads regular files itself (`PutPaths`: one durable group per call, ~20x
    // faster for many small files) unless it cannot see them (another user, a sandboxed
    // system service): those, and anything that is not a regular file, are streamed.
    let by_path = a.by_path
        || a.files
            .iter()
            .all(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file()));
    let counter = files_bar(a.files.len() as u64, show_progress(json));
    let mut results: Vec<(PathBuf, PutOutcome)> = Vec::new();
    if by_path {
        for chunk in a.files.chunks(PER_CALL) {
            let mut items = Vec::with_capacity(chunk.len());
            for f in chunk {
                let path = std::path::absolute(f)
                    .map_err(|e| CtlError::io(format!("resolving {}", f.display()), e))?;
                items.push(pb::PutPathRequest {
                    header: Some(header.clone()),
                    path: path.to_string_lossy().into_owned(),
                });
            }
            let done = c
                .put_paths(pb::PutPathsRequest { items })
                .await?
                .into_inner()
                .results;
            for (f, r) in chunk.iter().zip(done) {
                use pb::put_path_result::Result as R;
                let r = match r.result {
                    Some(R::Blob(b)) => Ok(b),
                    Some(R::Error(e)) => Err((e.code, e.message)),
                    None => Err((tonic::Code::Internal as i32, "no result".into())),
                };
                let unseen =
                    [tonic::Code::PermissionDenied, tonic::Code::NotFound].map(|c| c as i32);
                let r = match r {
                    Err((code, _)) if !a.by_path && unseen.contains(&code) => {
                        stream_one(c, &header, f).await?
                    }
                    r => r,
                };
                results.push((f.clone(), r));
                counter.inc(1);
            }
        }
    } else {
        for f in &a.files {
            results.push((f.clone(), stream_one(c, &header, f).await?));
            counter.inc(1);
        }
    }
    counter.finish_and_clear();
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let blobs: Vec<serde_json::Value> = results
            .iter()
            .map(|(f, r)| match r {
                Ok(b) => {
                    let mut v = render::blob_json(b);
                    v["file"] = serde_json::json!(f.display().to_string());
                    v
                }
                Err((code, msg)) => serde_json::json!({
                    "file": f.display().to_string(),
                    "error": msg,
                    "code": crate::client::grpc_code_name(tonic::Code::from_i32(*code)),
                }),
            })
            .collect();
        out_json(&serde_json::json!({ "blobs": blobs }))?;
    } else {
        let mut text = String::new();
        for (f, r) in &results {
            match r {
                Ok(b) => text.push_str(&format!("{}: {}\n", f.display(), blob_line(b))),
                Err((_, msg)) => text.push_str(&format!("{}: refused: {msg}\n", f.display())),
            }
        }
        out(&text)?;
    }
    if failed > 0 {
        return Err(CtlError::Problems(format!(
            "{failed} of {} files were not stored (see above)",
            results.len()
        )));
    }
    Ok(())
}

/// One file of a multi-file `put`, streamed to the daemon.
async fn stream_one(
    c: &mut Client,
    header: &pb::PutHeader,
    f: &Path,
) -> Result<PutOutcome, CtlError> {
    let file = match tokio::fs::File::open(f).await {
        Ok(file) => file,
        Err(e) => {
            return Ok(Err((
                tonic::Code::InvalidArgument as i32,
                format!("cannot open {}: {e}", f.display()),
            )));
        }
    };
    let size = file
        .metadata()
        .await
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let mut h = header.clone();
    h.size_hint = size;
    let bar = bytes_bar(size, false, "uploading to blobsyncd");
    Ok(match put_stream(c, h, Box::new(file), &bar, f).await {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err((tonic::Code::Internal as i32, "no blob".into())),
        Err(CtlError::Rpc(st)) => Err((st.code() as i32, st.message().to_owned())),
        Err(e) => return Err(e),
    })
}

/// A `done/total files` counter for a multi-file `put` on a terminal.
fn files_bar(total: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    ProgressBar::new(total).with_style(
        ProgressStyle::with_template("storing [{wide_bar}] {pos}/{len} files {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    )
}

/// Streams `reader` to the daemon as a Put. A read error cancels the call (so the daemon
/// discards the partial blob) instead of ending the stream, which would commit it.
async fn put_stream(
    c: &mut Client,
    header: pb::PutHeader,
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
    bar: &ProgressBar,
    file: &Path,
) -> Result<Option<pb::BlobInfo>, CtlError> {
    use pb::put_request::Msg;
    let (tx, rx) = mpsc::channel::<pb::PutRequest>(PUT_QUEUE);
    tx.send(pb::PutRequest {
        msg: Some(Msg::Header(header)),
    })
    .await
    .expect("the receiver is alive here");
    let task_bar = bar.clone();
    // On a read error the task hands the sender back with the error, so the request
    // stream stays open until the call below is dropped (a cancel, not a clean end).
    let mut reader_task = tokio::spawn(async move {
        loop {
            let mut buf = Vec::with_capacity(PUT_CHUNK);
            while buf.len() < PUT_CHUNK {
                match reader.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err((e, tx)),
                }
            }
            if buf.is_empty() {
                return Ok(());
            }
            task_bar.inc(buf.len() as u64);
            let msg = pb::PutRequest {
                msg: Some(Msg::Chunk(buf)),
            };
            if tx.send(msg).await.is_err() {
                // The call ended (the daemon answered early, with an error); it reports why.
                return Ok(());
            }
        }
    });
    let call = c.put(ReceiverStream::new(rx));
    tokio::pin!(call);
    let mut reader_done = false;
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            r = &mut reader_task, if !reader_done => {
                reader_done = true;
                match r {
                    Ok(Ok(())) => bar.finish_and_clear(),
                    Ok(Err((e, _tx))) => {
                        bar.abandon();
                        let what = if file == Path::new("-") {
                            "reading standard input".to_owned()
                        } else {
                            format!("reading {}", file.display())
                        };
                        return Err(CtlError::io(format!("{what} (nothing was stored)"), e));
                    }
                    Err(join) => panic!("the put reader task panicked: {join}"),
                }
            }
        }
    };
    bar.finish_and_clear();
    reader_task.abort();
    Ok(result?.into_inner().blob)
}

async fn get(c: &mut Client, a: cli::GetArgs, json: bool) -> Result<(), CtlError> {
    use pb::get_response::Msg;
    // Where the bytes go is settled (and the file opened) before anything is downloaded, so
    // a bad output path fails at once.
    let out_arg = a.output.unwrap_or_else(|| PathBuf::from("-"));
    let target = if out_arg == Path::new("-") {
        GetTarget::Stdout
    } else {
        GetTarget::resolve(&out_arg, &a.id)?
    };
    let output = target.path().to_path_buf();
    let to_stdout = matches!(target, GetTarget::Stdout);
    let req = pb::GetRequest {
        namespace: a.namespace,
        id: a.id,
        range: a.range.map(|r| pb::ByteRange {
            start: r.start,
            end: r.end,
        }),
        wait: !a.no_fetch,
    };
    let (mut sink, part) = target.open().await?;
    let visible = show_progress(json) && !to_stdout;
    let fetch = spinner(visible, "fetching");
    // A blob not downloaded yet is fetched by the daemon first: its progress events move the
    // bar until the bytes start coming to us.
    let follow = visible.then(|| {
        let (mut c, bar) = (c.clone(), fetch.clone());
        let (ns, id) = (req.namespace.clone(), req.id.clone());
        tokio::spawn(async move {
            use pb::event::Kind;
            let w = pb::WatchRequest {
                since: None,
                namespace: ns.clone(),
                no_progress: false,
            };
            let Ok(events) = c.watch(w).await else { return };
            let mut events = events.into_inner();
            while let Ok(Some(e)) = events.message().await {
                if let Some(Kind::TransferProgress(p)) = e.kind {
                    let id_matches = p.id == id || format!("{}/{}", p.namespace, p.id) == id;
                    if id_matches && (ns.is_empty() || p.namespace == ns) {
                        show_transfer(&bar, "fetching from the server", &p);
                    }
                }
            }
        })
    });
    let mut bar = ProgressBar::hidden();
    let mut written = 0u64;
    let download = async {
        let mut stream = c
            .get(req)
            .await
            .inspect_err(|_| fetch.finish_and_clear())?
            .into_inner();
        let first = stream
            .message()
            .await
            .inspect_err(|_| fetch.finish_and_clear())?;
        fetch.finish_and_clear();
        let Some(pb::GetResponse {
            msg: Some(Msg::Header(header)),
        }) = first
        else {
            return Err(CtlError::Rpc(tonic::Status::internal(
                "the daemon's Get stream did not start with a header",
            )));
        };
        bar = bytes_bar(Some(header.length), visible, "downloading");
        while let Some(msg) = stream.message().await? {
            if let Some(Msg::Chunk(data)) = msg.msg {
                sink.write_all(&data)
                    .await
                    .map_err(|e| CtlError::io(format!("writing {}", output.display()), e))?;
                written += data.len() as u64;
                bar.set_position(written);
            }
        }
        sink.flush()
            .await
            .map_err(|e| CtlError::io(format!("writing {}", output.display()), e))?;
        if written != header.length {
            return Err(CtlError::Rpc(tonic::Status::data_loss(format!(
                "the daemon announced {} bytes and sent {written}",
                header.length
            ))));
        }
        Ok(header)
    };
    // Ctrl-C is a failure like any other: the temp file goes (its guard runs on return).
    let result = tokio::select! {
        r = download => r,
        _ = tokio::signal::ctrl_c() => Err(CtlError::Io {
            what: format!("interrupted; {} was not written", output.display()),
            source: std::io::Error::from(std::io::ErrorKind::Interrupted),
        }),
    };
    if let Some(f) = follow {
        f.abort();
    }
    fetch.finish_and_clear();
    bar.finish_and_clear();
    drop(sink);
    let header = result?;
    if let Some(part) = part {
        part.commit()?;
    }
    let blob = header.blob.unwrap_or_default();
    if json {
        out_json(&json!({
            "namespace": blob.namespace,
            "id": blob.id,
            "size": blob.size,
            "start": header.start,
            "length": header.length,
            "output": output.display().to_string(),
        }))?;
    } else if !to_stdout {
        out(&format!(
            "{}/{}: wrote {} to {}\n",
            blob.namespace,
            blob.id,
            render::human_size(written),
            output.display()
        ))?;
    }
    Ok(())
}

/// Where `get` writes, decided before the download starts.
#[derive(Debug)]
enum GetTarget {
    /// `-o -`.
    Stdout,
    /// A path that does not exist yet, or a regular file: written to a `0600` temp file
    /// beside it and renamed over it at the end, so an interrupted get never leaves a
    /// truncated file that looks complete.
    Replace(PathBuf),
    /// A device, a FIFO, a socket or a symlink: written through (opened for writing, the
    /// symlink followed), as `cp` and `curl -o` do. Replacing it would turn `/dev/null` into a
    /// regular file, or a symlink into a copy.
    WriteThrough(PathBuf),
}

impl GetTarget {
    /// Decides for `-o path`; an existing directory means `path/ID`.
    fn resolve(path: &Path, id: &str) -> Result<Self, CtlError> {
        let mut path = path.to_path_buf();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            // The daemon checks the id; refuse here what would leave the directory.
            if id.is_empty() || id.contains('/') || id == "." || id == ".." {
                return Err(CtlError::Usage(format!("{id:?} is not a blob id")));
            }
            path.push(id);
        }
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::Replace(path)),
            Err(e) => Err(CtlError::io(format!("checking {}", path.display()), e)),
            Ok(m) if m.is_file() => Ok(Self::Replace(path)),
            Ok(m) if m.is_dir() => Err(CtlError::Usage(format!(
                "{} is a directory; name a file to write the blob to",
                path.display()
            ))),
            Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(&path) {
                Ok(t) if t.is_dir() => Err(CtlError::Usage(format!(
                    "{} links to a directory; name a file to write the blob to",
                    path.display()
                ))),
                _ => Ok(Self::WriteThrough(path)),
            },
            Ok(_) => Ok(Self::WriteThrough(path)),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Stdout => Path::new("-"),
            Self::Replace(p) | Self::WriteThrough(p) => p,
        }
    }

    /// Opens the sink; for [`GetTarget::Replace`] also the temp file's guard.
    async fn open(
        &self,
    ) -> Result<
        (
            Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
            Option<PartFile>,
        ),
        CtlError,
    > {
        match self {
            Self::Stdout => Ok((Box::new(tokio::io::stdout()), None)),
            Self::Replace(dest) => {
                let part = part_path(dest);
                // A leftover of a killed get (or anything else there, a symlink included) is
                // removed, then the temp is created exclusively: never opened through a link.
                match std::fs::remove_file(&part) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CtlError::io(format!("removing {}", part.display()), e));
                    }
                    _ => {}
                }
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&part)
                    .await
                    .map_err(|e| CtlError::io(format!("creating {}", part.display()), e))?;
                let guard = PartFile {
                    part,
                    dest: dest.clone(),
                    done: false,
                };
                Ok((Box::new(file), Some(guard)))
            }
            Self::WriteThrough(p) => {
                // A dangling symlink gets its target created, 0600 like any new file.
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .await
                    .map_err(|e| CtlError::io(format!("opening {}", p.display()), e))?;
                Ok((Box::new(file), None))
            }
        }
    }
}

/// The temp file of a [`GetTarget::Replace`]: removed on drop unless committed.
#[derive(Debug)]
struct PartFile {
    part: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl PartFile {
    /// Renames the complete temp file over the destination.
    fn commit(mut self) -> Result<(), CtlError> {
        std::fs::rename(&self.part, &self.dest).map_err(|e| {
            CtlError::io(
                format!(
                    "renaming {} to {}",
                    self.part.display(),
                    self.dest.display()
                ),
                e,
            )
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

/// `FILE` -> `FILE.blobctl-part` beside it.
fn part_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(".blobctl-part");
    p.with_file_name(name)
}

/// `rm ID...` (or `rm -`: ids from standard input). One id answers as before; with several,
/// each is deleted on its own and reported on its line, and any refusal makes the exit 1.
async fn rm(c: &mut Client, a: cli::RmArgs, json: bool) -> Result<(), CtlError> {
    let from_stdin = a.ids == ["-"];
    let ids: Vec<String> = if from_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CtlError::io("reading ids from standard input", e))?;
        text.split_whitespace().map(str::to_owned).collect()
    } else if a.ids.iter().any(|i| i == "-") {
        return Err(CtlError::Usage(
            "`-` (ids from standard input) can only be given alone".into(),
        ));
    } else {
        a.ids
    };
    if ids.is_empty() {
        return Err(CtlError::Usage("no ids on standard input".into()));
    }
    let mut targets = Vec::with_capacity(ids.len());
    for id in &ids {
        targets.push(cli::split_ns_id_or_default(&a.namespace, id).map_err(CtlError::Usage)?);
    }
    let single = targets.len() == 1 && !from_stdin;
    let mut rows = Vec::new();
    let mut text = String::new();
    let mut refused = 0usize;
    for (namespace, id) in targets {
        let r = c
            .delete(pb::DeleteRequest {
                namespace: namespace.clone(),
                id: id.clone(),
            })
            .await;
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(e) if single => return Err(e.into()),
            Err(e) => {
                refused += 1;
                let msg = CtlError::Rpc(e.clone()).to_string();
                rows.push(json!({
                    "namespace": namespace, "id": id, "error": msg,
                    "code": client::grpc_code_name(e.code()),
                }));
                text.push_str(&format!("{namespace}/{id}: refused: {msg}\n"));
                continue;
            }
        };
        let pending = r.status == pb::BlobStatus::PendingDelete as i32;
        rows.push(json!({
            "namespace": r.namespace,
            "id": r.id,
            "status": if pending { Value::from("PENDING_DELETE") } else { Value::Null },
        }));
        text.push_str(&if pending {
            format!(
                "{}/{}: deleted here; the server will be told at the next sync\n",
                r.namespace, r.id
            )
        } else {
            format!("{}/{}: deleted\n", r.namespace, r.id)
        });
    }
    if json && single {
        out_json(&rows[0])?;
    } else if json {
        out_json(&json!({ "deleted": rows }))?;
    } else {
        out(&text)?;
    }
    if refused > 0 {
        return Err(CtlError::Problems(format!(
            "{refused} of {} blob(s) could not be deleted (see above)",
            rows.len()
        )));
    }
    Ok(())
}

async fn ls(c: &mut Client, a: cli::LsArgs, json: bool) -> Result<(), CtlError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut token = String::new();
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut table = render::blobs_table();
    let mut first = true;
    // The document opens only once the first page arrived, so a failed call prints no
    // half document. After that, JSON is written page by page, so 100,000 blobs never sit
    // in memory at once.
    let mut opened = false;
    while left > 0 {
        let page = c
            .list(pb::ListRequest {
                namespace: a.namespace.clone().unwrap_or_default(),
                statuses: a.status.iter().map(|s| *s as i32).collect(),
                limit: LS_PAGE.min(u32::try_from(left).unwrap_or(u32::MAX)),
                page_token: token,
            })
            .await?
            .into_inner();
        let take = page
            .blobs
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        left -= take as u64;
        if json {
            let mut chunk = String::new();
            if !opened {
                chunk.push_str("{\"blobs\": [");
                opened = true;
            }
            for b in &page.blobs[..take] {
                chunk.push_str(if first { "\n  " } else { ",\n  " });
                first = false;
                chunk.push_str(&render::blob_json(b).to_string());
            }
            out(&chunk)?;
        } else {
            for b in &page.blobs[..take] {
                table.row(render::blob_row(b, now));
            }
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if json {
        out(if opened {
            "\n]}\n"
        } else {
            "{\"blobs\": [\n]}\n"
        })
    } else if table.is_empty() {
        out("no blobs\n")
    } else {
        out(&table.render())
    }
}

async fn ls_remote(c: &mut Client, a: cli::LsArgs, json: bool) -> Result<(), CtlError> {
    let mut token = String::new();
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut table = render::remote_table();
    let mut blobs = Vec::new();
    let mut namespace = String::new();
    while left > 0 {
        let page = c
            .list_remote(pb::ListRemoteRequest {
                namespace: a.namespace.clone().unwrap_or_default(),
                filter_flag: a.flag.map_or(0, |f| f as i32),
                deleted: a.deleted,
                limit: LS_PAGE.min(u32::try_from(left).unwrap_or(u32::MAX)),
                page_token: token,
            })
            .await?
            .into_inner();
        namespace = page.namespace;
        let take = page
            .blobs
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        left -= take as u64;
        for b in &page.blobs[..take] {
            if json {
                blobs.push(render::remote_blob_json(b));
            } else {
                table.row(render::remote_row(b));
            }
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    if json {
        out_json(&json!({ "namespace": namespace, "blobs": blobs }))
    } else if table.is_empty() {
        out(&format!(
            "no blobs on the server in namespace {namespace}\n"
        ))
    } else {
        out(&table.render())
    }
}

async fn status(c: &mut Client, json: bool) -> Result<(), CtlError> {
    let s = c.status(pb::StatusRequest {}).await?.into_inner();
    if json {
        out_json(&render::status_json(&s))
    } else {
        out(&render::status_text(&s))
    }
}

async fn sync(c: &mut Client, a: cli::SyncArgs, json: bool) -> Result<(), CtlError> {
    let spin = spinner(show_progress(json) && a.wait, "syncing");
    let r = c
        .sync(pb::SyncRequest {
            wait: a.wait,
            allow_mass_delete: a.allow_mass_delete,
        })
        .await;
    spin.finish_and_clear();
    let r = r?.into_inner();
    if json {
        out_json(&json!({
            "cycle": r.cycle,
            "summary": r.summary.as_ref().map_or(Value::Null, render::cycle_json),
        }))?;
    } else {
        match &r.summary {
            Some(s) => out(&format!("{}\n", render::cycle_text(s)))?,
            None => out(&format!("sync cycle {} started\n", r.cycle))?,
        }
    }
    match r.summary {
        Some(s) if !s.error.is_empty() => Err(CtlError::Problems(format!(
            "the sync cycle stopped early: {}",
            s.error
        ))),
        Some(s) if s.failed > 0 => Err(CtlError::Problems(format!(
            "{} transfer(s) failed for good since the last cycle: `blobctl ls --status \
             failed-upload` (or failed-download) shows why; `blobctl retry --all-failed` \
             tries again",
            s.failed
        ))),
        _ => Ok(()),
    }
}

async fn watch(c: &mut Client, a: cli::WatchArgs, json: bool) -> Result<(), CtlError> {
    let mut stream = c
        .watch(pb::WatchRequest {
            since: a.since,
            namespace: a.namespace.unwrap_or_default(),
            no_progress: a.no_progress,
        })
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        if json {
            out(&format!("{}\n", render::event_json(&e)))?;
        } else {
            out(&format!("{}\n", render::event_text(&e)))?;
        }
    }
    // The daemon ends every watch when it shuts down.
    eprintln!("blobctl: the daemon closed the event stream (it is shutting down)");
    Ok(())
}

async fn retry(c: &mut Client, a: cli::RetryArgs, json: bool) -> Result<(), CtlError> {
    let r = c
        .retry(pb::RetryRequest {
            namespace: a.namespace.unwrap_or_default(),
            id: a.id.unwrap_or_default(),
            all_failed: a.all_failed,
        })
        .await?
        .into_inner();
    if json {
        out_json(&json!({ "requeued": r.requeued }))
    } else {
        out(&format!(
            "re-queued {} blob{}\n",
            r.requeued,
            if r.requeued == 1 { "" } else { "s" }
        ))
    }
}

async fn priority(c: &mut Client, a: cli::PriorityArgs, json: bool) -> Result<(), CtlError> {
    let r = c
        .set_priority(pb::SetPriorityRequest {
            namespace: a.namespace,
            id: a.id,
            priority: a.priority as i32,
        })
        .await?
        .into_inner();
    let blob = r.blob.unwrap_or_default();
    if json {
        out_json(&render::blob_json(&blob))
    } else {
        out(&format!(
            "{}/{}: priority {}\n",
            blob.namespace,
            blob.id,
            render::priority_name(blob.priority).to_ascii_lowercase()
        ))
    }
}

async fn pause(c: &mut Client, a: cli::NsArgs, pause: bool, json: bool) -> Result<(), CtlError> {
    let namespace = a.namespace.unwrap_or_default();
    // A typo would pause nothing, silently: only namespaces this daemon knows (`default`,
    // configured, or holding blobs). An invalid name goes to the daemon, which says what is wrong.
    if pause && blobsync_shared::Namespace::new(&namespace).is_ok() {
        let s = c.status(pb::StatusRequest {}).await?.into_inner();
        if namespace != "default" && !s.namespaces.iter().any(|n| n.namespace == namespace) {
            let known: Vec<&str> = s.namespaces.iter().map(|n| n.namespace.as_str()).collect();
            return Err(CtlError::Usage(format!(
                "namespace {namespace} is not configured and holds no blobs here, so there is \
                 nothing to pause (known: {}). Check the spelling; to pause it before its first \
                 blob, add [namespaces.{namespace}] to the daemon's config",
                known.join(", ")
            )));
        }
    }
    let state = if pause {
        c.pause(pb::PauseRequest { namespace })
            .await?
            .into_inner()
            .state
    } else {
        c.resume(pb::ResumeRequest { namespace })
            .await?
            .into_inner()
            .state
    };
    if json {
        out_json(&render::pause_json(state.as_ref()))
    } else {
        out(&format!("{}\n", render::pause_text(state.as_ref())))
    }
}

async fn flags(c: &mut Client, a: cli::FlagsArgs, json: bool) -> Result<(), CtlError> {
    let flags = if a.clear || !a.set.is_empty() {
        c.set_flags(pb::SetFlagsRequest {
            namespace: a.namespace.clone(),
            id: a.id.clone(),
            flags: a.set.iter().map(|f| *f as i32).collect(),
        })
        .await?
        .into_inner()
        .flags
    } else {
        c.get_flags(pb::GetFlagsRequest {
            namespace: a.namespace.clone(),
            id: a.id.clone(),
        })
        .await?
        .into_inner()
        .flags
    };
    let names: Vec<String> = flags.iter().map(|f| render::flag_name(*f)).collect();
    if json {
        out_json(&json!({ "namespace": a.namespace, "id": a.id, "flags": names }))
    } else if names.is_empty() {
        out(&format!("{}/{}: no flags\n", a.namespace, a.id))
    } else {
        out(&format!("{}/{}: {}\n", a.namespace, a.id, names.join(", ")))
    }
}

async fn verify(c: &mut Client, a: cli::VerifyArgs, json: bool) -> Result<(), CtlError> {
    use pb::verify_response::Msg;
    let mut stream = c
        .verify(pb::VerifyRequest {
            namespace: a.namespace.unwrap_or_default(),
            id: a.id.unwrap_or_default(),
            remote: a.remote,
        })
        .await?
        .into_inner();
    let visible = show_progress(json);
    let bar = if visible {
        let b = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("verifying [{wide_bar}] {pos}/{len} blobs {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    let mut problems = Vec::new();
    let mut report = None;
    while let Some(m) = stream.message().await? {
        match m.msg {
            Some(Msg::Progress(p)) => {
                bar.set_length(p.total);
                bar.set_position(p.checked);
                bar.set_message(format!(
                    "{} / {}",
                    render::human_size(p.bytes_done),
                    render::human_size(p.bytes_total)
                ));
            }
            Some(Msg::Problem(p)) => {
                if json {
                    problems.push(render::problem_json(&p));
                } else {
                    bar.suspend(|| out(&format!("{}\n", render::problem_text(&p))))?;
                }
            }
            Some(Msg::Report(r)) => report = Some(r),
            None => {}
        }
    }
    bar.finish_and_clear();
    let r = report.ok_or_else(|| {
        CtlError::Rpc(tonic::Status::internal(
            "the daemon's Verify stream ended without a report",
        ))
    })?;
    if json {
        out_json(&json!({
            "checked": r.checked,
            "ok": r.ok,
            "problems": problems,
            "bytes": r.bytes,
            "skipped": r.skipped,
            "skipped_blobs": r.skipped_blobs.iter().map(|s| json!({
                "namespace": s.namespace, "id": s.id, "reason": s.reason,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        let read = if r.bytes > 0 {
            format!(" ({} read)", render::human_size(r.bytes))
        } else {
            String::new()
        };
        out(&format!(
            "checked {} blob{}{read}: {} ok, {} with problems, {} skipped\n",
            r.checked,
            if r.checked == 1 { "" } else { "s" },
            r.ok,
            r.problems,
            r.skipped
        ))?;
        for s in &r.skipped_blobs {
            out(&format!("skipped {}/{}: {}\n", s.namespace, s.id, s.reason))?;
        }
    }
    if r.problems > 0 {
        return Err(CtlError::Problems(format!(
            "{} blob{} failed verification",
            r.problems,
            if r.problems == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

async fn limits(c: &mut Client, a: cli::LimitsArgs, json: bool) -> Result<(), CtlError> {
    let l = c
        .set_limits(pb::SetLimitsRequest {
            bwlimit_up: a.up,
            bwlimit_down: a.down,
            transfers: a.transfers,
        })
        .await?
        .into_inner()
        .limits
        .unwrap_or_default();
    if json {
        out_json(&render::limits_json(&l))
    } else {
        let mut t = Table::new(&[
            ("LIMIT", render::Align::Left),
            ("VALUE", render::Align::Left),
        ]);
        t.row(vec!["upload".into(), render::human_rate(l.bwlimit_up)]);
        t.row(vec!["download".into(), render::human_rate(l.bwlimit_down)]);
        t.row(vec!["transfers".into(), l.transfers.to_string()]);
        out(&t.render())
    }
}

async fn version(socket: Option<&Path>, json: bool) -> Result<(), CtlError> {
    let ours = env!("CARGO_PKG_VERSION");
    if !json {
        out(&format!(
            "blobctl {ours} (control API v1.{})\n",
            pb::API_VERSION
        ))?;
    }
    let path = client::discover_socket(socket)?;
    let mut c = client::connect(&path).await?;
    let v = c.get_version(pb::GetVersionRequest {}).await?.into_inner();
    if json {
        out_json(&json!({
            "blobctl_version": ours,
            "daemon_version": v.daemon_version,
            "api_version": v.api_version,
            "socket": path.display().to_string(),
        }))
    } else {
        out(&format!(
            "blobsyncd {} (control API v1.{}) at {}\n",
            v.daemon_version,
            v.api_version,
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_downloads_sit_beside_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/a/out.bin")),
            PathBuf::from("/tmp/a/out.bin.blobctl-part")
        );
        assert_eq!(part_path(Path::new("x")), PathBuf::from("x.blobctl-part"));
    }

    #[test]
    fn get_targets_replace_only_regular_files_and_new_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let kind = |p: &Path| match GetTarget::resolve(p, "blob1") {
            Ok(GetTarget::Replace(p)) => format!("replace {}", p.display()),
            Ok(GetTarget::WriteThrough(p)) => format!("through {}", p.display()),
            Ok(GetTarget::Stdout) => "stdout".into(),
            Err(e) => format!("error {e}"),
        };
        std::fs::write(d.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("file"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(d.join("none"), d.join("dangling")).unwrap();
        let show = |name: &str| d.join(name).display().to_string();
        assert_eq!(kind(&d.join("new")), format!("replace {}", show("new")));
        assert_eq!(kind(&d.join("file")), format!("replace {}", show("file")));
        assert_eq!(kind(&d.join("link")), format!("through {}", show("link")));
        assert_eq!(
            kind(&d.join("dangling")),
            format!("through {}", show("dangling"))
        );
        assert_eq!(kind(Path::new("/dev/null")), "through /dev/null");
        assert_eq!(kind(d), format!("replace {}", show("blob1")));
        std::fs::create_dir(d.join("blob1")).unwrap();
        assert!(kind(d).contains("is a directory"), "{}", kind(d));
        assert!(matches!(
            GetTarget::resolve(d, ".."),
            Err(CtlError::Usage(_))
        ));
    }
}
