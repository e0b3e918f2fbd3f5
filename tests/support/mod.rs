pub mod app;
pub mod clients;
pub mod pki;
pub mod proxy;
