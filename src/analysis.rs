//! Placeholder: filled by the analysis work (issue 7).
