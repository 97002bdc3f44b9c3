//! brig's content scanner (issue 5, "Pre-push scanning"). See docs/SCANNER.md.
