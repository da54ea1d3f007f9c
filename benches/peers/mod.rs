//! What the process benches share (`process_backend` and `compare` include this module with
//! `mod peers;`): the tasks they measure and the raw echo peers they measure them against.

pub(crate) mod echo;
pub(crate) mod tasks;
