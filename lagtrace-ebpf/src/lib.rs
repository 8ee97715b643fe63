//! Empty library target: it lets `lagtrace` name this crate as a build
//! dependency, so cargo rebuilds the kernel programs when they change.
#![no_std]
