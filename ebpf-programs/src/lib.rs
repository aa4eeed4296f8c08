//! Empty on purpose: a library target lets `userspace` name this crate as a
//! build-dependency, so cargo rebuilds the embedded object when it changes.
#![no_std]
