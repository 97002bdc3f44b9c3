//! brig's forges (issue 5). See docs/GIT.md, "Forges".
