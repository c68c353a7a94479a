//! picie's stage kinds, one file each: PiCIE's method (`picie-core`) wired into the engine
//! (`picie-engine`). A kind only wires: its params, its ports, and a `run` that reads its
//! inputs, calls the method and writes its outputs. What crosses a port (stream items,
//! Arrow schemas, checkpoints) is defined once, in `io/`.
//!
//! To add a kind: write a type implementing [`picie_engine::Stage`] in its own file here
//! and register it in [`builtin`].

pub mod augment;
pub mod backbone;
pub mod checks;
pub mod evaluate;
pub mod extract;
pub mod init;
pub mod io;
pub mod kmeans;
pub mod knn;
pub mod label;
pub mod memory;
pub mod probe;
pub mod sections;
pub mod stego;
pub mod train;

use picie_engine::Registry;

/// Every kind `picie run` knows, with picie's sections and cache-key provenance.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    sections::register(&mut r);
    r.register::<init::Init>()
        .register::<augment::Augment>()
        .register::<backbone::Backbone>()
        .register::<extract::Extract>()
        .register::<kmeans::KmeansStage>()
        .register::<knn::Knn>()
        .register::<label::Label>()
        .register::<train::Train>()
        .register::<stego::Stego>()
        .register::<probe::Probe>()
        .register::<evaluate::Evaluate>()
        .check_plan(checks::check)
        .check_plan(probe::check);
    r
}
