//! What the scheduler and the worker both need: domain types that parse, the tenant registry, the
//! runtime settings, the secret source for tenants' API keys and the versioned job wire format.
//!
//! Nothing in this crate opens a connection: it only reads files it is pointed at and the
//! environment map it is given.

pub mod amqp;
pub mod domain;
pub mod health;
pub mod job;
pub mod registry;
pub mod secret;
pub mod settings;
pub mod startup;
pub mod telemetry;

pub use domain::{EmailAddress, PortalDomain, Region, Sha1Digest, TenantName};
pub use secret::ApiKey;
