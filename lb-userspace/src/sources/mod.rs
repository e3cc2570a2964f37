//! Where services come from: Marathon and the static services file.

pub mod marathon;
pub mod services_file;
