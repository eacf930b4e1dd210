//! `nn`'s integration tests, one binary: each file beside this one is a module here (one
//! binary per crate keeps a clean build's link time and disk small). Declare a new file below;
//! `xtask`'s tidy test `every_integration_test_file_is_compiled` fails while one is left out.

mod autocast;
mod backward;
mod common;
mod conv;
mod generic;
mod transformer_ops;
