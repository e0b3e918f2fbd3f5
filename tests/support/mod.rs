pub mod admin;
pub mod app;
pub mod clients;
pub mod http_app;
pub mod kube_api;
pub mod netns;
pub mod pki;
pub mod proxy;
