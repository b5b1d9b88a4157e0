//! The protocol layer of the EC2 Query API, shared by `vireod` (the server) and `vireo` (the CLI).
//!
//! - [`sigv4`]: AWS Signature Version 4, signing (clients) and verification (server).
//! - [`form`]: the one form decoding of a query string, which SigV4 and [`query`] share.
//! - [`query`]: parsing a Query request (`Action=…&InstanceId.1=…`) into [`query::Params`].
//! - [`xml`]: writing `<{Action}Response>` documents.
//! - [`error`]: [`Ec2Error`] and the EC2 error document.
//! - [`ids`]: EC2-style resource ids.
//!
//! No business logic lives here: which actions exist and what they do is the server's.

#![forbid(unsafe_code)]

pub mod error;
pub mod form;
pub mod ids;
pub mod query;
pub mod sigv4;
pub mod xml;

pub use error::Ec2Error;
