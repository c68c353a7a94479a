//! The engine's one integration-test binary: toy stages and sections, no application.

mod common;

mod azure;
mod cache;
mod epochs;
mod executor;
mod gcs;
mod odd;
mod remote;
mod s3;
mod sections;
mod seeds;
mod shards;
mod spec_errors;
