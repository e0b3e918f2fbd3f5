//! The data path, one stage a file.

pub mod decide;
pub mod outcome;
