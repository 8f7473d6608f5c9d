//! The recording file format: writer and reader (see the record issue).
