//! The engine's one integration-test binary: toy stages and sections, no application.

mod common;

mod cache;
mod epochs;
mod executor;
mod sections;
mod seeds;
mod spec_errors;
