//! Integration tests: one binary so heavy dependencies link once.

mod account_connect;
mod admin;
mod audit;
mod ca;
mod cli_policy;
mod connect;
mod demo;
mod faults;
mod http2;
mod identity;
mod integrating;
mod limits;
mod oauth2;
mod policy_decide;
mod policy_load;
mod proxy;
mod reload;
mod sandbox;
mod scrub;
mod secrets;
mod serve;
mod signing;
mod support;
mod tools;
