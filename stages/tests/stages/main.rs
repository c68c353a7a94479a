//! The stage kinds' one integration-test binary: kinds run through the engine on toy inputs
//! (modules by kind). picie's end-to-end tests are in the root's `tests/integration/`.

mod knn;
mod probe;
mod stego;
