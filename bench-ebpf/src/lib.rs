//! A library target lets `tests` name this crate as a build-dependency, so cargo
//! rebuilds the embedded floor objects when they change. The programs are the
//! binaries in `src/bin/`.
#![no_std]
