//! Helpers shared by capstan's API clients (kubelet, scheduler, controllers): the parts of the
//! Kubernetes API that are logic rather than types. The types themselves come from
//! `k8s-openapi`; this crate holds what they leave as strings.

pub mod disruption;
pub mod json;
pub mod meta;
pub mod quota;
pub mod quantity;
pub mod quota_scope;

pub use quantity::{Quantity, QuantityError};
