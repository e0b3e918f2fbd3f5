pub mod netns;
pub mod pki;
