//! Landlock for the sandbox's init. (Stub: to be written.)
