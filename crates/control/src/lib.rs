//! vireod: Vireo's EC2-compatible compute service on one host.

pub mod api;
pub mod db;
pub mod error;
pub mod filter;
pub mod hosts;
pub mod import;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod process;
pub mod service;
pub mod storage;
pub mod time;
pub mod types;
pub mod userdata;
