//! Compile the CSI and admin protobufs with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi/csi.proto");
    println!("cargo:rerun-if-changed=proto/admin/admin.proto");
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(["csi.proto"], ["proto/csi"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    let fds = protox::compile(["admin.proto"], ["proto/admin"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
