//! The built-in stage kinds, one file each. To add a kind: write a type implementing
//! [`crate::Stage`] in its own file here and register it in [`builtin`].

use crate::stage::Registry;

/// Every kind `picie run` knows.
pub fn builtin() -> Registry {
    Registry::new()
}
