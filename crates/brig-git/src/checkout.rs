//! Pinned, shallow, optionally sparse checkout of a session's repository.
