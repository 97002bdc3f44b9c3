//! brig's seccomp allow-list, built with seccompiler. (Stub: to be written.)
