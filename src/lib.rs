#![doc = include_str!("../README.md")]
//!
//! # Crates
//!
//! | module | crate | feature |
//! |---|---|---|
//! | [`core`] (also re-exported at the root) | `sse-core` | always |
//! | [`hyper`] | `sse-hyper` | always |

#[doc(inline)]
pub use sse_core::*;

/// The core crate: envelope, encoder, repository, backend trait, hub.
pub use sse_core as core;

/// The hyper 1.x endpoints and server.
pub use sse_hyper as hyper;

pub use sse_hyper::{DevSessions, JwtSessions, SessionResolver, SseRouter, serve};
