//! vireod: Vireo's EC2-compatible compute service on one host.

pub mod db;
pub mod error;
pub mod filter;
pub mod ids;
pub mod model;
pub mod process;
pub mod service;
pub mod storage;
pub mod time;
pub mod types;
pub mod userdata;
