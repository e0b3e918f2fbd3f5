pub mod admin;
pub mod app;
pub mod clients;
pub mod http_app;
pub mod netns;
pub mod pki;
pub mod proxy;
