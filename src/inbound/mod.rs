//! The data path, one stage a file.

pub mod decide;
pub mod forward;
pub mod outcome;
pub mod prefixed;
