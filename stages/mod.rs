//! The built-in stage kinds, one file each. To add a kind: write a type implementing
//! [`crate::Stage`] in its own file here and register it in [`builtin`].

pub mod augment;
pub mod evaluate;
pub mod extract;
pub mod init;
pub mod kmeans;
pub mod label;
pub mod train;

use crate::stage::Registry;

/// Every kind `picie run` knows, with picie's sections and cache-key provenance.
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    crate::sections::register(&mut r);
    r.register::<init::Init>()
        .register::<augment::Augment>()
        .register::<extract::Extract>()
        .register::<kmeans::KmeansStage>()
        .register::<label::Label>()
        .register::<train::Train>()
        .register::<evaluate::Evaluate>();
    r
}
