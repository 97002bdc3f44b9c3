//! brig's repo access (issue 5). See docs/GIT.md.

pub mod checkout;
