//! `blobctl`: the command-line client of blobsyncd's control socket. Argument parsing, one
//! call per command, and rendering; no sync logic (see ARCHITECTURE.md).

mod cli;
mod client;
mod commands;
mod doctor;
mod keys;
mod render;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help and version itself (exit 0) and usage errors (exit 2).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(client::EXIT_USAGE));
        }
    };
    let json = cli.json;
    let verbose = cli.verbose;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blobctl: cannot start the async runtime: {e}");
            return ExitCode::from(client::EXIT_ERROR);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::from(client::EXIT_OK),
        // `blobctl ls | head`: the reader left; that is not an error.
        Err(client::CtlError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::from(client::EXIT_OK)
        }
        Err(e) => {
            if json {
                let doc = serde_json::json!({
                    "error": { "code": e.code_name(), "message": e.to_string() }
                });
                eprintln!("{doc}");
            } else if verbose > 0 {
                eprintln!("blobctl: {e} [{}]", e.code_name());
            } else {
                eprintln!("blobctl: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
