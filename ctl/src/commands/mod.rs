//! One function per command: build the request, make the call, print the answer. This
//! module dispatches and holds what the commands share (output, progress bars); `put`,
//! `get` and the rest live in the submodules.
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

use crate::cli::{self, Cli, Command};
use crate::client::{self, CtlError};
use crate::render::{self};

mod get;
mod manage;
mod put;

use get::get;
use manage::*;
use put::put;

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
    if let Some(p) = &cli.config {
        client::use_config(p)?;
    }
    let socket = cli.socket.clone();
    if cli.verbose > 0 {
        let config = client::config_path().map_or("(none)".into(), |(p, named)| {
            let how = if named {
                "named"
            } else if p.exists() {
                "default"
            } else {
                "default, absent"
            };
            format!("{} ({how})", p.display())
        });
        let sock = client::discover_socket(socket.as_deref())
            .map_or_else(|e| e.to_string(), |p| p.display().to_string());
        eprintln!("blobctl: config {config}; socket {sock}");
    }
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
        Command::Key(k) => crate::keys::run(k, json, socket.as_deref()).await,
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
        Command::Config => crate::doctor::config(socket.as_deref(), json),
        Command::Doctor => crate::doctor::doctor(socket.as_deref(), json).await,
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| CtlError::io(format!("writing man pages to {}", dir.display()), e))?;
            if json {
                out_json(&json!({ "dir": dir.display().to_string() }))
            } else {
                out(&format!("wrote the man pages to {}\n", dir.display()))
            }
        }
        Command::Watch(a) => watch(&mut connect().await?, a, json, socket.as_deref()).await,
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

pub fn out_json(v: &Value) -> Result<(), CtlError> {
    // Unwrap: serializing a Value cannot fail.
    out(&format!("{}\n", serde_json::to_string_pretty(v).unwrap()))
}

/// Progress bars only for people: stdout a terminal and no --json.
pub(super) fn show_progress(json: bool) -> bool {
    !json && std::io::stdout().is_terminal()
}

pub(super) fn bytes_bar(total: Option<u64>, visible: bool, what: &str) -> ProgressBar {
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
pub(super) fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .expect("static template")
    .progress_chars("=> ")
}

/// Turns `bar` (a spinner until the first progress event) into a byte bar for the daemon's
/// transfer of a blob to or from the server, and moves it.
pub(super) fn show_transfer(bar: &ProgressBar, what: &str, p: &pb::TransferProgress) {
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

pub(super) fn spinner(visible: bool, what: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub(super) fn blob_line(b: &pb::BlobInfo) -> String {
    format!(
        "{}/{}  {}  {}",
        b.namespace,
        b.id,
        render::human_size(b.size),
        render::status_name(b.status)
    )
}
