//! The command line: clap definitions and the parsers for values that need more than clap
//! gives (priorities, statuses, flags, byte ranges, rates).
//!
//! This module only describes and parses arguments; it never talks to the daemon. The value
//! parsers are in `values`.

mod values;

use std::path::PathBuf;

use blobsync_proto::{BlobStatus, Flag, Priority};
use clap::{Args, Parser, Subcommand};

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "blobctl",
    version,
    about = "Control the blobsync daemon (blobsyncd) over its local socket",
    long_about = "Control the blobsync daemon (blobsyncd) over its local socket.\n\n\
        blobctl does no syncing itself: each command is one call to the daemon, which must be \
        running (`blobsyncd --foreground`, or `systemctl --user start blobsyncd`).",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or invalid argument, 3 daemon unreachable.\n\
        Examples:\n  \
        blobctl put report.pdf --id report-2026\n  \
        tar c photos | blobctl put - -n backups --priority low\n  \
        blobctl get report-2026 -o report.pdf\n  \
        blobctl ls --status pending-upload --json"
)]
pub struct Cli {
    /// Print one JSON document (one object per line for `watch`) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's control socket (default: as the daemon: $XDG_RUNTIME_DIR/blobsync/blobsyncd.sock,
    /// or the `socket` key of the config file).
    #[arg(long, global = true, env = "BLOBSYNC_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The device's config file, for its socket and key file (default:
    /// ~/.config/blobsync/config.toml). Picks one of several daemons on one machine.
    #[arg(long, global = true, env = "BLOBSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// More detail: which config and socket are used, and error codes (-v), on stderr.
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every blobctl command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a new blob from a file or from standard input.
    #[command(after_help = "Examples:\n  \
        blobctl put notes.txt                      # random id, printed\n  \
        blobctl put notes.txt --id notes -n docs --priority high\n  \
        pg_dump db | blobctl put - --id db-2026-11-29 --wait\n  \
        blobctl put /srv/big.iso --by-path         # the daemon reads the file itself\n  \
        blobctl put mail/*.eml -n MX --by-path     # many files, made durable together")]
    Put(PutArgs),
    /// Read a blob (or a byte range of it) to a file or standard output.
    #[command(after_help = "Examples:\n  \
        blobctl get notes -n docs -o notes.txt\n  \
        blobctl get db-2026-11-29 | psql db\n  \
        blobctl get big --range 0-1023 -o head.bin  # first KiB (inclusive, like curl -r)\n  \
        blobctl get big --range 1048576-           # from 1 MiB to the end")]
    Get(GetArgs),
    /// Delete blobs (here at once, on the server at the next sync).
    #[command(after_help = "Examples:\n  \
        blobctl rm notes -n docs\n  \
        blobctl rm docs/notes default/old-1 default/old-2\n  \
        blobctl ls -n tmp --json | jq -r '.blobs[].id' | blobctl rm -n tmp -")]
    Rm(RmArgs),
    /// List blobs with their sync status (or, with --remote, as the server has them).
    #[command(after_help = "Examples:\n  \
        blobctl ls\n  \
        blobctl ls -n MX --status failed-download --status failed-upload\n  \
        blobctl ls --remote -n MX --flag pending --json")]
    Ls(LsArgs),
    /// Show the daemon's state: counts, transfers, remote, last and next sync.
    #[command(after_help = "Example:\n  blobctl status --json | jq .counts")]
    Status,
    /// Start a sync cycle now.
    #[command(
        after_help = "Examples:\n  blobctl sync\n  blobctl sync --wait   # and print what it did"
    )]
    Sync(SyncArgs),
    /// Print daemon events as they happen (Ctrl-C to stop).
    #[command(after_help = "Examples:\n  \
        blobctl watch\n  \
        blobctl watch --since 120 --json   # resume after event 120")]
    Watch(WatchArgs),
    /// Re-queue a failed transfer now, or every failed one.
    #[command(
        after_help = "Examples:\n  blobctl retry notes -n docs\n  blobctl retry --all-failed"
    )]
    Retry(RetryArgs),
    /// Change a blob's transfer priority (low, medium, high, urgent).
    #[command(after_help = "Example:\n  blobctl priority big-upload urgent")]
    Priority(PriorityArgs),
    /// Pause syncing, for everything or one namespace.
    #[command(after_help = "Examples:\n  blobctl pause\n  blobctl pause -n backups")]
    Pause(NsArgs),
    /// Resume syncing, for everything or one namespace.
    #[command(after_help = "Examples:\n  blobctl resume\n  blobctl resume -n backups")]
    Resume(NsArgs),
    /// Read or set a blob's flags on the server (pending, processing, processed, failed).
    #[command(after_help = "Examples:\n  \
        blobctl flags msg-1 -n MX\n  \
        blobctl flags msg-1 -n MX --set processing\n  \
        blobctl flags msg-1 -n MX --clear")]
    Flags(FlagsArgs),
    /// Check local copies against their recorded hashes (and with --remote, the server's copies).
    #[command(after_help = "Exits with 1 when any blob fails.\nExamples:\n  \
        blobctl verify\n  blobctl verify --remote -n docs")]
    Verify(VerifyArgs),
    /// Show or change bandwidth and concurrency limits (until the daemon restarts).
    #[command(
        after_help = "Rates take K, M, G suffixes (powers of 1024); 0 means unlimited.\nExamples:\n  \
        blobctl limits\n  \
        blobctl limits --up 1M --down 0 --transfers 5"
    )]
    Limits(LimitsArgs),
    /// Export or import the storage key, wrapped with a passphrase (works without the daemon).
    #[command(subcommand)]
    Key(KeyCommand),
    /// The incoming box: print the recipient apps encrypt deliveries to.
    #[command(subcommand)]
    Incoming(IncomingCommand),
    /// Print blobctl's and the daemon's versions.
    Version,
    /// Show the effective configuration and paths: what the daemon reads from its config
    /// file, with every default filled in (works without the daemon).
    Config,
    /// Check this device in one report: config, paths, key, daemon, remote, credentials,
    /// alarms and failed transfers; says what to do about each problem (exit 1 if any).
    Doctor,
    /// Write blobctl's man pages (blobctl.1 and one per command) into a directory.
    #[command(after_help = "Example:\n  \
        blobctl man ~/.local/share/man/man1 && man blobctl")]
    Man {
        /// The directory to write the pages to (created if missing).
        dir: PathBuf,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        blobctl completions bash > ~/.local/share/bash-completion/completions/blobctl\n  \
        blobctl completions zsh > ~/.zfunc/_blobctl")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Arguments of `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The file to store, or `-` for standard input; several files are stored one blob each.
    /// Several regular files are read by the daemon itself in batches (the fast way), and
    /// streamed when it can't read them.
    #[arg(value_name = "FILE|-", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// The blob id, 1-128 of A-Z a-z 0-9 _ - (default: a random UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// Name each blob after its file, so `ls` shows names: the file name with every character
    /// outside A-Z a-z 0-9 _ - replaced by `_` (report.pdf becomes report_pdf).
    #[arg(long, conflicts_with = "id")]
    pub id_from_name: bool,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Upload priority.
    #[arg(long, value_parser = Named::new(parse_priority, PRIORITIES), default_value = "medium")]
    pub priority: Priority,
    /// Keep the blob on this device only; never upload it.
    #[arg(long)]
    pub local_only: bool,
    /// Wait until the blob is uploaded (or failed for good); retriable failures keep waiting.
    /// Ctrl-C stops waiting: the blob stays stored and queued.
    #[arg(long)]
    pub wait: bool,
    /// Let the daemon read FILE itself instead of sending its bytes (FILE must be readable by
    /// the daemon's user); with several files, never fall back to streaming.
    #[arg(long)]
    pub by_path: bool,
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The blob id.
    pub id: String,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Where to write: a file, or `-` for standard output. Without it the bytes go to
    /// standard output, unless that is a terminal (then `-o -` is needed, as with curl).
    #[arg(short = 'o', long, value_name = "FILE|-")]
    pub output: Option<PathBuf>,
    /// Only bytes A through B (inclusive, from 0), or from A to the end with `A-`.
    #[arg(long, value_name = "A-B", value_parser = parse_range)]
    pub range: Option<ByteRangeArg>,
    /// Fail instead of fetching a blob that is not downloaded yet.
    #[arg(long)]
    pub no_fetch: bool,
}

/// Arguments of `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Blob ids (or NS/ID), or `-` alone to read them from standard input (one per line or
    /// separated by spaces).
    #[arg(required = true, value_name = "ID|NS/ID|-")]
    pub ids: Vec<String>,
    /// The namespace of ids given without one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// Splits `NS/ID` (as `put` prints a blob) into namespace and id; a plain id keeps `ns`
/// (the `-n` value, `None` when not given). An id never contains `/`, so the split is
/// unambiguous; a `-n` naming another namespace is refused rather than guessed. Anything
/// else with a `/` goes to the daemon as it is, which says what is wrong with it.
pub fn split_ns_id(ns: Option<&str>, id: &str) -> Result<(Option<String>, String), String> {
    let split = id
        .split_once('/')
        .filter(|(n, i)| !n.is_empty() && !i.is_empty() && !i.contains('/'));
    let Some((n, i)) = split else {
        return Ok((ns.map(str::to_owned), id.to_owned()));
    };
    match ns {
        Some(other) if other != n => Err(format!(
            "{id} names namespace {n}, but -n says {other}: give one of them"
        )),
        _ => Ok((Some(n.to_owned()), i.to_owned())),
    }
}

/// [`split_ns_id`] for a `-n` with the default `default` (taken as not given).
pub fn split_ns_id_or_default(ns: &str, id: &str) -> Result<(String, String), String> {
    let given = (ns != "default").then_some(ns);
    let (n, i) = split_ns_id(given, id)?;
    Ok((n.unwrap_or_else(|| ns.to_owned()), i))
}

/// Arguments of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this namespace (default: every namespace; with --remote: default).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only blobs with this status (repeatable).
    #[arg(long, value_parser = Named::new(parse_status, STATUSES), conflicts_with = "remote")]
    pub status: Vec<BlobStatus>,
    /// List what the server has instead of the local view.
    #[arg(long)]
    pub remote: bool,
    /// With --remote: only blobs with this flag.
    #[arg(long, value_parser = Named::new(parse_flag, FLAGS), requires = "remote")]
    pub flag: Option<Flag>,
    /// With --remote: list deleted blobs (tombstones).
    #[arg(long, requires = "remote")]
    pub deleted: bool,
    /// Stop after this many blobs (default: all).
    #[arg(long)]
    pub limit: Option<u64>,
}

/// Arguments of `sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Wait for the cycle to finish and print what it did.
    #[arg(long)]
    pub wait: bool,
    /// Also apply the remote deletions the mass-deletion guard holds (see `status`).
    #[arg(long)]
    pub allow_mass_delete: bool,
}

/// Arguments of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Resume after this event id (replays what the daemon still buffers); 0 for all buffered.
    #[arg(long)]
    pub since: Option<u64>,
    /// Only events about this namespace (plus daemon-wide ones).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Leave out transfer progress events.
    #[arg(long)]
    pub no_progress: bool,
    /// Exit when the daemon closes the stream (by default the watch waits for the daemon to
    /// come back, as after a restart, and resumes).
    #[arg(long)]
    pub no_reconnect: bool,
}

/// Arguments of `retry`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "all_failed"])))]
pub struct RetryArgs {
    /// The blob id.
    pub id: Option<String>,
    /// Every FAILED_UPLOAD and FAILED_DOWNLOAD blob.
    #[arg(long)]
    pub all_failed: bool,
    /// The namespace (default: `default`; with --all-failed: every namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Arguments of `priority`.
#[derive(Debug, Args)]
pub struct PriorityArgs {
    /// The blob id.
    pub id: String,
    /// The new priority.
    #[arg(value_parser = Named::new(parse_priority, PRIORITIES))]
    pub priority: Priority,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// An optional namespace (pause, resume).
#[derive(Debug, Args)]
pub struct NsArgs {
    /// Only this namespace (default: everything).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Arguments of `flags`.
#[derive(Debug, Args)]
pub struct FlagsArgs {
    /// The blob id.
    pub id: String,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Replace the flags with these.
    #[arg(long, num_args = 1.., value_parser = Named::new(parse_flag, FLAGS), conflicts_with = "clear")]
    pub set: Vec<Flag>,
    /// Remove every flag.
    #[arg(long)]
    pub clear: bool,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also download and authenticate the server's copies.
    #[arg(long)]
    pub remote: bool,
    /// Only this namespace (default: all).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only this blob.
    #[arg(long)]
    pub id: Option<String>,
}

/// Arguments of `limits`.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Upload bandwidth per second, e.g. 500K, 2M; 0 = unlimited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub up: Option<u64>,
    /// Download bandwidth per second, e.g. 500K, 2M; 0 = unlimited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub down: Option<u64>,
    /// Transfers at once (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub transfers: Option<u32>,
}

/// `incoming ...`.
#[derive(Debug, Subcommand)]
pub enum IncomingCommand {
    /// Print the incoming recipient (age1...), as the daemon derives it from the storage key.
    #[command(after_help = "Example:\n  \
        R=$(blobctl incoming recipient)\n  \
        age -r \"$R\" < message.eml > message.age   # what a mail server does for you")]
    Recipient,
}

/// `key export` and `key import`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write the storage key wrapped with a passphrase, to move it to another device.
    #[command(
        after_help = "Example:\n  blobctl key export -o blobsync-key.txt   # asks for a passphrase twice"
    )]
    Export(KeyExportArgs),
    /// Install a key written by `key export` (refuses to replace an existing key without --force).
    #[command(after_help = "Example:\n  blobctl key import blobsync-key.txt")]
    Import(KeyImportArgs),
    /// Move the key to another key store (`key_store`: file, keyring, credential) and set the
    /// config's `key_store`.
    #[command(
        after_help = "Examples:\n  blobctl key migrate --to keyring      # the desktop's Secret Service / Keychain\n  sudo blobctl key migrate --to credential --config /etc/blobsync/config.toml"
    )]
    Migrate(KeyMigrateArgs),
    /// Put the key on the server, wrapped with a passphrase, for `key restore` on new devices.
    #[command(after_help = "Example:\n  blobctl key backup        # asks for a passphrase twice")]
    Backup(KeyBackupArgs),
    /// Fetch the key backup from the server, unwrap it with its passphrase, and install it.
    #[command(after_help = "Example:\n  blobctl key restore       # asks for the passphrase")]
    Restore(KeyRestoreArgs),
}

/// Arguments of `key migrate`.
#[derive(Debug, Args)]
pub struct KeyMigrateArgs {
    /// The key store to move the key to: file, keyring or credential.
    #[arg(long, value_name = "STORE")]
    pub to: String,
    /// The key store it is in now (default: the config's `key_store`).
    #[arg(long, value_name = "STORE")]
    pub from: Option<String>,
    /// The key file (default: the config's `key_file`).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Where `--to credential` writes the encrypted credential.
    #[arg(long, value_name = "PATH")]
    pub credential_file: Option<PathBuf>,
    /// The daemon's config file (default: CONFIG_DIR/config.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Arguments of `key backup`.
#[derive(Debug, Args)]
pub struct KeyBackupArgs {
    /// Read the passphrase from the first line of this file instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Replace a backup the server holds already (of another key, or another passphrase).
    #[arg(long)]
    pub replace: bool,
    /// The daemon's config file (default: CONFIG_DIR/config.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Arguments of `key restore`.
#[derive(Debug, Args)]
pub struct KeyRestoreArgs {
    /// Read the passphrase from the first line of this file instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The key store to write the key to: file or keyring (default: the config's `key_store`).
    #[arg(long, value_name = "STORE")]
    pub to: Option<String>,
    /// The key file to write with `--to file` (default: the config's `key_file`).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// The daemon's config file (default: CONFIG_DIR/config.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Arguments of `key export`.
#[derive(Debug, Args)]
pub struct KeyExportArgs {
    /// Where to write the wrapped key, or `-` for standard output.
    #[arg(short = 'o', long, value_name = "FILE|-", default_value = "-")]
    pub output: PathBuf,
    /// Read the passphrase from the first line of this file instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The key file (default: the daemon's, CONFIG_DIR/key or the config's `key_file`).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// Arguments of `key import`.
#[derive(Debug, Args)]
pub struct KeyImportArgs {
    /// The wrapped key written by `key export`, or `-` for standard input.
    #[arg(value_name = "FILE|-")]
    pub input: PathBuf,
    /// Read the passphrase from the first line of this file instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The key file to write (default: the daemon's).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Replace an existing, different key (data encrypted with it becomes unreadable here).
    #[arg(long)]
    pub force: bool,
}

pub use values::*;
use values::{FLAGS, PRIORITIES, STATUSES};

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("blobctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn put_takes_all_its_options() {
        let cli = parse(&[
            "put",
            "-",
            "--id",
            "x1",
            "-n",
            "docs",
            "--priority",
            "URGENT",
            "--local-only",
            "--wait",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Put(p) = cli.command else {
            panic!()
        };
        assert_eq!(p.files, [PathBuf::from("-")]);
        assert_eq!(p.id.as_deref(), Some("x1"));
        assert_eq!(p.namespace, "docs");
        assert_eq!(p.priority, Priority::Urgent);
        assert!(p.local_only && p.wait && !p.by_path);
    }

    #[test]
    fn defaults_are_default_namespace_and_medium() {
        let Command::Put(p) = parse(&["put", "f"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            (p.namespace.as_str(), p.priority),
            ("default", Priority::Medium)
        );
        let Command::Get(g) = parse(&["get", "x"]).unwrap().command else {
            panic!()
        };
        assert_eq!(g.output, None, "no -o: stdout, unless it is a terminal");
        assert!(g.range.is_none());
    }

    #[test]
    fn ns_slash_id_names_the_namespace_and_conflicts_are_refused() {
        assert_eq!(
            split_ns_id(None, "smalls/x"),
            Ok((Some("smalls".into()), "x".into()))
        );
        assert_eq!(split_ns_id(None, "x"), Ok((None, "x".into())));
        assert_eq!(
            split_ns_id(Some("MX"), "x"),
            Ok((Some("MX".into()), "x".into()))
        );
        assert_eq!(
            split_ns_id(Some("smalls"), "smalls/x"),
            Ok((Some("smalls".into()), "x".into()))
        );
        assert!(
            split_ns_id(Some("MX"), "smalls/x")
                .unwrap_err()
                .contains("-n says MX")
        );
        for odd in ["/x", "smalls/", "../etc/passwd"] {
            assert_eq!(
                split_ns_id(None, odd),
                Ok((None, odd.into())),
                "the daemon refuses it"
            );
        }
        assert_eq!(
            split_ns_id_or_default("default", "smalls/x"),
            Ok(("smalls".into(), "x".into()))
        );
        assert_eq!(
            split_ns_id_or_default("default", "x"),
            Ok(("default".into(), "x".into()))
        );
    }

    #[test]
    fn bad_values_are_usage_errors_that_say_what_is_allowed() {
        let e = parse(&["priority", "x", "asap"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("low, medium, high or urgent"), "{e}");
        let e = parse(&["ls", "--status", "done"]).unwrap_err();
        assert!(e.to_string().contains("pending-upload"), "{e}");
        let e = parse(&["get", "x", "--range", "9-3"]).unwrap_err();
        assert!(e.to_string().contains("before it starts"), "{e}");
        assert!(
            parse(&["retry"]).is_err(),
            "retry needs an id or --all-failed"
        );
        assert!(parse(&["retry", "x", "--all-failed"]).is_err());
        assert!(parse(&["limits", "--transfers", "0"]).is_err());
        assert!(parse(&["flags", "x", "--set"]).is_err());
        assert!(
            parse(&["ls", "--flag", "pending"]).is_err(),
            "--flag needs --remote"
        );
    }

    #[test]
    fn statuses_and_flags_accept_several_spellings() {
        for s in [
            "pending-upload",
            "PENDING_UPLOAD",
            "Pending_Upload",
            "BLOB_STATUS_PENDING_UPLOAD",
        ] {
            assert_eq!(parse_status(s), Ok(BlobStatus::PendingUpload), "{s}");
        }
        assert!(parse_status("unspecified").is_err());
        assert_eq!(parse_flag("processed"), Ok(Flag::Processed));
        assert!(parse_flag("done").is_err());
        let Command::Flags(f) = parse(&["flags", "m", "--set", "pending", "processing"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(f.set, vec![Flag::Pending, Flag::Processing]);
    }

    #[test]
    fn ranges_are_inclusive_on_the_command_line_and_half_open_in_the_api() {
        assert_eq!(
            parse_range("0-1023"),
            Ok(ByteRangeArg {
                start: 0,
                end: Some(1024)
            })
        );
        assert_eq!(
            parse_range("5-"),
            Ok(ByteRangeArg {
                start: 5,
                end: None
            })
        );
        assert_eq!(
            parse_range("7-7"),
            Ok(ByteRangeArg {
                start: 7,
                end: Some(8)
            })
        );
        for bad in [
            "",
            "-5",
            "a-b",
            "5",
            "1-2-3",
            "18446744073709551615-18446744073709551615",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_use_binary_suffixes() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("512"), Ok(512));
        assert_eq!(parse_rate("500K"), Ok(500 * 1024));
        assert_eq!(parse_rate("2MiB/s"), Ok(2 << 20));
        assert_eq!(parse_rate("1.5m"), Ok(3 << 19));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        for bad in ["", "x", "-1", "5T", "K"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_all_failed_takes_an_optional_namespace() {
        let Command::Retry(r) = parse(&["retry", "--all-failed", "-n", "MX"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(r.all_failed && r.id.is_none());
        assert_eq!(r.namespace.as_deref(), Some("MX"));
    }
}
