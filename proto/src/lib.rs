//! stylefarm's gRPC protocol, package `stylefarm.v1` (generated from `proto/` at build time),
//! KEDA's external scaler API, the id newtypes shared by the coordinator, the workers and the
//! client, and what their binaries share: connecting, health checks, logging.

pub mod blob;
pub mod connect;
pub mod ids;
pub mod logging;

/// Generated messages, clients and servers of `stylefarm.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("stylefarm.v1");
}

/// KEDA's external scaler API (package `externalscaler`), which the coordinator serves so that
/// KEDA can scale worker pools on the farm's queue.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}

/// The encoded file descriptor set of `stylefarm.v1` and `externalscaler`, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stylefarm_descriptor.bin"));

/// Largest chunk of a blob in one message (well under gRPC's 4 MiB default limit).
pub const BLOB_CHUNK_BYTES: usize = 1024 * 1024;

/// The largest message of a lock-step shard's stream (`WorkerService.Shard`: a tile's pixels
/// or gradient), which both ends allow: more than gRPC's default 4 MiB, which tiles over
/// ~580 px with their margins pass.
pub const MAX_SHARD_MESSAGE_BYTES: usize = 256 << 20;
