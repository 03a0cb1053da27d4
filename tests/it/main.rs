//! Integration tests: one binary so heavy dependencies link once.

mod audit;
mod cli_policy;
mod faults;
mod http2;
mod identity;
mod policy_decide;
mod policy_load;
mod proxy;
mod secrets;
mod support;
