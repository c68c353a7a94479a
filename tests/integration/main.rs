//! The one integration test binary (ripgrep style): modules by area.

mod common;

mod analysis;
mod cache;
mod cli;
mod executor;
mod picie;
mod spec_errors;
