//! Compiles `proto/etcd.proto` into the gRPC services and messages, with protox (a protobuf
//! compiler in Rust) instead of protoc, which the machine building capstan need not have.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/etcd.proto");
    let fds = protox::compile(["etcd.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
