//! Generates the patronus.v1 messages and services with tonic/prost at build
//! time, with Debian's `protoc` (scripts/setup.sh installs protobuf-compiler),
//! plus the file descriptor set that server reflection serves. Without the
//! `grpc` feature there is nothing to generate.

#[cfg(feature = "grpc")]
use std::path::PathBuf;

#[cfg(not(feature = "grpc"))]
fn main() {}

#[cfg(feature = "grpc")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "patronus/v1/resources.proto",
        "patronus/v1/control_plane.proto",
        "patronus/v1/dataplane_sync.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if std::env::var_os("PROTOC").is_none() && which_protoc().is_none() {
        return Err(
            "protoc not found: run scripts/setup.sh (Debian package protobuf-compiler)".into(),
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Maps as BTreeMap: encoding is then deterministic, which the sync hub
    // relies on to tell a changed snapshot from an unchanged one.
    tonic_prost_build::configure()
        .btree_map(".")
        .file_descriptor_set_path(out.join("patronus_v1_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}

#[cfg(feature = "grpc")]
fn which_protoc() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("protoc"))
            .find(|p| p.is_file())
    })
}
