//! brig-model: the model gateway (work in progress).
