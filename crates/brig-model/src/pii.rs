//! PII detectors: brig-redact's, shared with the journal.

pub use brig_redact::pii::PiiRules;
