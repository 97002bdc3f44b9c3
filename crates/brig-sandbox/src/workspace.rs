//! (Stub: to be written.)
