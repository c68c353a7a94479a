//! Placeholder: filled by the report work (issue 7).
