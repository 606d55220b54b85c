//! `put`: one file or many (the daemon reads regular files itself in `PutPaths` batches,
//! else they are streamed), `--id-from-name`, and `--wait`, which follows the upload and says
//! why it is not done.

use std::path::{Path, PathBuf};
use std::time::Duration;

use blobsync_proto as pb;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::cli;
use crate::client::{Client, CtlError};
use crate::render::{self};

pub(super) async fn put(c: &mut Client, mut a: cli::PutArgs, json: bool) -> Result<(), CtlError> {
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
    if a.id_from_name {
        if from_stdin {
            return Err(CtlError::Usage(
                "--id-from-name needs a file name; standard input has none (use --id)".into(),
            ));
        }
        a.id = Some(id_from_name(&file)?);
    }
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
pub(super) fn upload_blocked(
    s: &pb::StatusResponse,
    ns: &str,
    name: &str,
) -> Result<Option<String>, String> {
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
pub(super) async fn wait_upload(
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
pub(super) type PutOutcome = Result<pb::BlobInfo, (i32, String)>;

/// `put` of several files: one blob each, refused for good or stored each on its own. With
/// `--by-path` the daemon reads them, up to 1,000 per `PutPaths` call (made durable together);
/// otherwise each is streamed in turn. One line (or JSON object) per file, in order.
pub(super) async fn put_many(c: &mut Client, a: cli::PutArgs, json: bool) -> Result<(), CtlError> {
    /// Files per `PutPaths` call.
    const PER_CALL: usize = 1000;
    if a.files.iter().any(|f| f == Path::new("-")) {
        return Err(CtlError::Usage(
            "`-` (standard input) can only be put alone".into(),
        ));
    }
    if a.id.is_some() {
        return Err(CtlError::Usage(
            "--id names one blob; put several files without it (each gets a random id, or its \
             file's name with --id-from-name)"
                .into(),
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
                    header: Some(header_for(&header, f, a.id_from_name)?),
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
                        stream_one(c, &header_for(&header, f, a.id_from_name)?, f).await?
                    }
                    r => r,
                };
                results.push((f.clone(), r));
                counter.inc(1);
            }
        }
    } else {
        for f in &a.files {
            let h = header_for(&header, f, a.id_from_name)?;
            results.push((f.clone(), stream_one(c, &h, f).await?));
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

/// A blob id from a file name (`--id-from-name`): characters outside the id alphabet become
/// `_`, and the result is cut to the id's 128 characters.
pub(super) fn id_from_name(f: &Path) -> Result<String, CtlError> {
    let name = f
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() {
        return Err(CtlError::Usage(format!(
            "{} has no file name to make an id of; give --id",
            f.display()
        )));
    }
    Ok(id)
}

/// The header for one file of a multi-file `put`.
pub(super) fn header_for(
    h: &pb::PutHeader,
    f: &Path,
    by_name: bool,
) -> Result<pb::PutHeader, CtlError> {
    let mut h = h.clone();
    if by_name {
        h.id = id_from_name(f)?;
    }
    Ok(h)
}

/// One file of a multi-file `put`, streamed to the daemon.
pub(super) async fn stream_one(
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
pub(super) fn files_bar(total: u64, visible: bool) -> ProgressBar {
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
pub(super) async fn put_stream(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_file_names_keep_the_id_alphabet() {
        assert_eq!(
            id_from_name(Path::new("/x/report.pdf")).unwrap(),
            "report_pdf"
        );
        assert_eq!(
            id_from_name(Path::new("a b-c_d.tar.gz")).unwrap(),
            "a_b-c_d_tar_gz"
        );
        assert_eq!(id_from_name(Path::new("héllo")).unwrap(), "h_llo");
        let long = "x".repeat(300);
        assert_eq!(id_from_name(Path::new(&long)).unwrap().len(), 128);
        assert!(id_from_name(Path::new("/")).is_err());
    }
}
