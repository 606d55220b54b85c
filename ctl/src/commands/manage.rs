//! The commands that look at or steer the daemon: `rm`, `ls`, `status`, `sync`, `watch`,
//! `retry`, `priority`, `pause`/`resume`, `flags`, `verify`, `limits`, `version`.

use std::path::Path;
use std::time::Duration;

use blobsync_proto as pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::*;
use crate::cli;
use crate::client::{Client, CtlError};
use crate::render::{self, Table};

/// `rm ID...` (or `rm -`: ids from standard input). One id answers as before; with several,
/// each is deleted on its own and reported on its line, and any refusal makes the exit 1.
pub(super) async fn rm(c: &mut Client, a: cli::RmArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn ls(c: &mut Client, a: cli::LsArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn ls_remote(c: &mut Client, a: cli::LsArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn status(c: &mut Client, json: bool) -> Result<(), CtlError> {
    let s = c.status(pb::StatusRequest {}).await?.into_inner();
    if json {
        out_json(&render::status_json(&s))
    } else {
        out(&render::status_text(&s))
    }
}

pub(super) async fn sync(c: &mut Client, a: cli::SyncArgs, json: bool) -> Result<(), CtlError> {
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

/// `watch`: the daemon's events, one line each (or one JSON object each). In text, an idle
/// cycle prints nothing, transfer progress carries its rate, and progress that arrives after
/// the blob's final status is dropped. When the daemon goes away (a restart, an upgrade),
/// the watch waits for it and resumes, unless `--no-reconnect`.
pub(super) async fn watch(
    c: &mut Client,
    a: cli::WatchArgs,
    json: bool,
    socket: Option<&Path>,
) -> Result<(), CtlError> {
    let mut view = render::WatchView::default();
    let mut since = a.since;
    let mut c = c.clone();
    loop {
        let req = pb::WatchRequest {
            since,
            namespace: a.namespace.clone().unwrap_or_default(),
            no_progress: a.no_progress,
        };
        let mut stream = c.watch(req).await?.into_inner();
        let ended = loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    since = Some(e.id);
                    if json {
                        out(&format!("{}\n", render::event_json(&e)))?;
                    } else {
                        for line in view.lines(&e) {
                            out(&format!("{line}\n"))?;
                        }
                    }
                }
                // The daemon ends every watch when it shuts down.
                Ok(None) => break "the daemon closed the event stream (it is shutting down)",
                Err(_) => break "the connection to the daemon broke",
            }
        };
        if a.no_reconnect {
            eprintln!("blobctl: {ended}");
            return Ok(());
        }
        eprintln!("blobctl: {ended}; waiting for it to come back (Ctrl-C to stop)");
        c = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let path = client::discover_socket(socket)?;
            if let Ok(c) = client::connect(&path).await {
                break c;
            }
        };
        // The same daemon (the connection broke): resume after the last event seen. A
        // restarted one numbers its events afresh: replay all it has, from its start.
        let last = c
            .status(pb::StatusRequest {})
            .await?
            .into_inner()
            .last_event_id;
        if since.is_none_or(|s| s > last) {
            since = Some(0);
            view = render::WatchView::default();
        }
        eprintln!("blobctl: reconnected to the daemon");
    }
}

pub(super) async fn retry(c: &mut Client, a: cli::RetryArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn priority(
    c: &mut Client,
    a: cli::PriorityArgs,
    json: bool,
) -> Result<(), CtlError> {
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

pub(super) async fn pause(
    c: &mut Client,
    a: cli::NsArgs,
    pause: bool,
    json: bool,
) -> Result<(), CtlError> {
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

pub(super) async fn flags(c: &mut Client, a: cli::FlagsArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn verify(c: &mut Client, a: cli::VerifyArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn limits(c: &mut Client, a: cli::LimitsArgs, json: bool) -> Result<(), CtlError> {
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

pub(super) async fn version(socket: Option<&Path>, json: bool) -> Result<(), CtlError> {
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
