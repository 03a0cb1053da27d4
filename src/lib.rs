//! behalf: a sidecar that lets one AI agent serve many people safely.
//!
//! Agent tool calls run in sandboxes that hold no secrets; every request they make leaves
//! through one egress pipeline that knows who the current user is, checks the policy files and
//! injects that user's scoped credential at the boundary. `../shared/DESIGN.md` is the contract.
//!
//! Modules, named after the concepts in DESIGN.md:
//!
//! - [`principal`]: validated tenant, user and group ids, and the principal they form.
//! - [`policy`]: policy files → validated, indexed [`policy::PolicySet`]; pure decisions.
//! - [`identity`]: verifying identity tokens (JWT) into principals; the dev issuer.
//! - [`secrets`]: the secret store (encrypted file, env or mounted dir) and the `Secret` type.
//! - [`egress`]: the one pipeline every outbound request takes (normalise → decide → clean →
//!   resolve → inject → connect → send → scrub → audit).
//! - [`inject`]: placing a credential on a request in the service's form (including signing
//!   and OAuth2 access tokens).
//! - [`accounts`]: end users connecting their own accounts (OAuth2 authorization code + PKCE).
//! - [`proxy`]: the forward-proxy front door.
//! - [`door`]: what both front doors share: bounded accepting, draining on shutdown.
//! - [`sandbox`]: tools as wasm components in wasmtime, one fresh instance per call.
//! - [`api`]: the sidecar HTTP API the agent calls (invoke, list tools, health, metrics).
//! - [`serve`]: assembling the sidecar before any port is bound.
//! - [`reload`]: hot reload of the policy and tools while serving.
//! - [`audit`]: the HMAC-chained, fsynced audit log of every decision, and its verification.
//! - [`state`]: the private state directory and atomic, 0600 file writes.
//! - [`demo`]: `behalf demo`, the end-to-end story on loopback.
//! - [`cli`]: the `behalf` command line (the binary in `main.rs` only parses and calls it).

// `unsafe` is denied everywhere but one function: loading precompiled components behalf
// wrote itself (`sandbox::deserialize_own_artifact`), which says why it is sound.
#![deny(unsafe_code)]

pub mod accounts;
pub mod api;
pub mod audit;
pub mod cli;
pub mod demo;
pub mod door;
pub mod egress;
pub mod identity;
pub mod inject;
pub mod policy;
pub mod principal;
pub mod proxy;
pub mod reload;
pub mod sandbox;
pub mod secrets;
pub mod serve;
pub mod state;
