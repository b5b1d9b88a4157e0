//! vireod: Vireo's EC2-compatible compute service on one host.

pub mod api;
pub mod cidr;
pub mod console;
pub mod db;
pub mod durable;
pub mod error;
pub mod filter;
pub mod hosts;
pub mod imds;
pub mod import;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod netmodel;
pub mod process;
pub mod service;
pub mod storage;
pub mod time;
pub mod types;
pub mod userdata;
