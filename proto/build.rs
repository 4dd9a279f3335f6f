//! Compiles `concord/v1/*.proto` with protox (a protobuf compiler in Rust), so
//! building Concord needs no system `protoc`. Also writes the encoded file
//! descriptor set that the gRPC reflection service serves.

use std::path::PathBuf;

use anyhow::Context;
use prost::Message;

fn main() -> anyhow::Result<()> {
    let protos = ["concord/v1/kv.proto", "concord/v1/admin.proto", "concord/v1/internal.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."]).context("compiling the .proto files")?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("concord_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".concord.v1")
        .compile_fds(fds)
        .context("generating Rust code from the .proto files")?;
    Ok(())
}
