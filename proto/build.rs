//! Generates the tonic/prost code for `blobsync.proto` with a vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler, and writes the file descriptor set that the
//! daemon serves through gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: a build script is single-threaded; nothing else reads the environment meanwhile.
    // prost-build finds protoc only through `PROTOC`.
    unsafe { std::env::set_var("PROTOC", &protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out_dir.join("blobsync_descriptor.bin"))
        .compile_protos(
            &[PathBuf::from("blobsync.proto")],
            &[PathBuf::from("."), well_known],
        )?;
    println!("cargo:rerun-if-changed=blobsync.proto");
    Ok(())
}
