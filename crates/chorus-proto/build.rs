//! Compiles proto/ with protox (pure Rust): no system `protoc` is needed.
//!
//! The client protocol's messages also derive serde, so that WebSocket text frames carry the
//! same messages as JSON (field names as in the .proto file, oneofs as `{"kind": {"<name>": ..}}`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("chorus/v1/cluster.proto"),
        root.join("chorus/v1/client.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .message_attribute(
            ".chorus.client.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(
            ".chorus.client.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"snake_case\")]",
        )
        .field_attribute(
            ".chorus.client.v1.Event.data_deflate",
            "#[serde(skip_serializing_if = \"Vec::is_empty\")]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
