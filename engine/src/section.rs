//! Top-level sections of the pipeline file that the application defines (`dataset:`,
//! `device:`, ...). The engine only parses them through the application's parser, puts
//! their canonical form into the cache keys of the kinds that read them, and hands them to
//! those kinds' contexts; what they mean is the application's business.

use std::any::Any;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;

use crate::diag::Diagnostic;

/// A parsed section value.
pub trait Section: Any + Send + Sync + Debug {
    /// What goes into the cache key of every node that reads it.
    fn canonical(&self) -> serde_json::Value;
    /// One line for run records and logs.
    fn describe(&self) -> String {
        match self.canonical() {
            serde_json::Value::String(s) => s,
            v => v.to_string(),
        }
    }
}

/// Parses a section: the node when the file has it, the pipeline file's folder for relative
/// paths. `Ok(None)` means the section is absent and has no default.
pub type ParseSection =
    dyn Fn(Option<&Node>, &Path) -> Result<Option<Arc<dyn Section>>, Vec<Diagnostic>> + Send + Sync;

/// A section kind the application registers (see [`crate::Registry::section`]).
#[derive(Clone)]
pub struct SectionDef {
    pub name: &'static str,
    /// What it is, in words, for errors ("the data set").
    pub what: &'static str,
    /// How to add it, for the error when a kind needs it and the file has none.
    pub hint: &'static str,
    /// Read by every kind and keyed into every node (e.g. the device class), rather than
    /// only by the kinds that list it in [`crate::Stage::SECTIONS`].
    pub global: bool,
    pub(crate) parse: Arc<ParseSection>,
}

impl SectionDef {
    pub fn new(
        name: &'static str,
        what: &'static str,
        hint: &'static str,
        parse: impl Fn(Option<&Node>, &Path) -> Result<Option<Arc<dyn Section>>, Vec<Diagnostic>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            name,
            what,
            hint,
            global: false,
            parse: Arc::new(parse),
        }
    }

    /// Makes the section global (see [`SectionDef::global`]).
    pub fn global(mut self) -> Self {
        self.global = true;
        self
    }
}

/// The sections a node may read, by name.
pub type Sections = std::collections::BTreeMap<&'static str, Arc<dyn Section>>;

/// A section by name, downcast to the application's type.
pub fn get<'a, T: Section>(sections: &'a Sections, name: &str) -> Option<&'a T> {
    sections
        .get(name)
        .and_then(|s| (s.as_ref() as &dyn Any).downcast_ref::<T>())
}
