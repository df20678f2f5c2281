//! The request and the answer, as DESIGN.md states them: the request and the environment's
//! defaults validated ([`request`]), invocation payloads turned into requests ([`event`]), the
//! retention a request asks for and its rule ([`retention`]), the answer ([`response`]), the
//! errors ([`error`]) and the per-invocation metrics line ([`metrics`]). Data and pure rules:
//! no AWS call, no engine.

pub mod error;
pub mod event;
pub mod metrics;
pub mod request;
pub mod response;
pub mod retention;
pub mod targets;
