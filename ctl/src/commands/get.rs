//! `get`: where the bytes go is settled before the download (a temp file beside the target,
//! renamed over it at the end; devices and FIFOs written through), with the daemon's fetch
//! from the server shown while it runs.

use std::path::{Path, PathBuf};

use blobsync_proto as pb;
use indicatif::ProgressBar;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::cli;
use crate::client::{Client, CtlError};
use crate::render::{self};

pub(super) async fn get(c: &mut Client, a: cli::GetArgs, json: bool) -> Result<(), CtlError> {
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
pub(super) enum GetTarget {
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
pub(super) struct PartFile {
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
pub(super) fn part_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(".blobctl-part");
    p.with_file_name(name)
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
